"""The chat UI (`loretune chat`): every model in a store, streamed replies, voice and pictures.

One Gradio page: a dropdown of the store's models (exports newest first, then the base, each
labelled with its evaluation score), the conversation, a question box with streamed replies, a
recorder/upload for a spoken question (Whisper tiny.en; the transcript lands in the question box
and is sent), a picture box (read through CLIP and the export's projector on the transformers
path), and the decoding settings (temperature 0 is greedy). A status line under the title says
what is loaded and what went wrong: an empty store, a broken export, a missing speech model, or a
picture the chosen model cannot read is a message there (and a toast), never a traceback, and the
app keeps running. `ask` and `models` are also API endpoints (`gradio_client`).

Gradio is imported here only: the backends, the model list and speech work without it.
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path
from typing import Any, Iterator

# Before Gradio is imported: no usage reporting or version check over a network that may be absent.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from loretune.chat.backends import ChatError, default_threads  # noqa: E402
from loretune.chat.catalogue import ServableModel  # noqa: E402
from loretune.chat.models import Catalogue, ModelCache  # noqa: E402
from loretune.chat.speech import Transcriber  # noqa: E402
from loretune.model.generate import Decoding  # noqa: E402

logger = logging.getLogger(__name__)

ENGINES = {"gguf": "llama.cpp", "merged": "transformers", "base": "transformers"}
MODEL_EVENTS = "model"  # events that use the loaded model run one at a time (one model, one CPU)


def error(message: str) -> str:
    return f"**Error:** {message}"


def note(message: str) -> str:
    return f"**Note:** {message}"


def model_status(model: ServableModel, backend: Any) -> str:
    """What the chosen model is and can do; how it reads pictures when that deserves a warning."""
    pictures = "reads pictures" if backend.accepts_images else "text only (pictures are refused)"
    line = f"Ready: **{model.label}** on {ENGINES.get(model.kind, model.kind)}, {pictures}."
    images = getattr(backend, "images", None)
    if images is not None:
        clip = images.spec.clip
        if clip.assumed:
            line += (f" Its projector does not name its CLIP, so {clip.model_id} (the features stage's default) "
                     "reads pictures.")
        if clip.pretrained is None:
            line += f" CLIP {clip.model_id} has random weights: pictures carry no meaning to it."
    return line


def refusal_for_picture(model: ServableModel) -> str:
    why = ("it is a GGUF file run by llama.cpp, which reads text only here" if model.kind == "gguf"
           else "it has no image projector")
    return (f"{model.label} cannot look at pictures ({why}), so the picture was not sent. Choose an export's "
            "merged (transformers) model to ask about it, or remove the picture.")


def text_history(history: list[dict[str, str]], system: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system.strip()}] if system.strip() else []) + list(history)


def build_app(store: str | Path, *, system_prompt: str | None = None, hotwords: str | None = None,
              transcriber: Transcriber | None = None, cache: ModelCache | None = None) -> gr.Blocks:
    """The Blocks app over `store`; `.launch()` it (or use `launch`). Building it loads no model:
    the chosen one loads when a page opens or the choice changes (one at a time, `ModelCache`).

    `hotwords` biases Whisper towards the domain's names (e.g. "Naruto"), which a small model
    otherwise mishears as common words.
    """
    catalogue = Catalogue(store)
    cache = cache if cache is not None else ModelCache()
    transcriber = transcriber if transcriber is not None else Transcriber()
    atexit.register(cache.close)
    try:
        labels = [m.label for m in catalogue.models()]
        startup = (note(catalogue.empty_message()) if not labels
                   else f"{len(labels)} models in {catalogue.store}; pick one and ask a question.")
    except ChatError as exc:
        labels, startup = [], error(str(exc))
    system_default = system_prompt if system_prompt is not None else catalogue.system_prompt()

    def load(label: str | None) -> tuple[ServableModel, Any]:
        model = catalogue.find(label)
        return model, cache.get(model)

    def select_model(label: str | None) -> Iterator[tuple[str, Any, Any]]:
        """Load the chosen model; the line under the dropdown says what it can do, or what is wrong,
        and the decoding sliders move to the evaluation's recommendation for it."""
        if not label:
            yield (note(catalogue.empty_message()) if not labels else "Pick a model."), gr.update(), gr.update()
            return
        yield f"Loading {label} …", gr.update(), gr.update()
        try:
            model, backend = load(label)
        except ChatError as exc:
            gr.Warning(str(exc))
            yield error(str(exc)), gr.update(), gr.update()
            return
        temperature, top_p, why = model.starting_settings()
        yield (model_status(model, backend) + (f" {why}" if why else ""), gr.update(value=temperature),
               gr.update(value=top_p))

    def refresh(label: str | None) -> tuple[Any, str]:
        try:
            choices = [m.label for m in catalogue.models()]
        except ChatError as exc:
            return gr.update(), error(str(exc))
        if not choices:
            return gr.update(choices=[], value=None), note(catalogue.empty_message())
        value = label if label in choices else choices[0]
        return gr.update(choices=choices, value=value), f"{len(choices)} models in {catalogue.store}."

    def picture_added(image: str | None, label: str | None) -> Any:
        if not image:
            return gr.skip()
        try:
            model = catalogue.find(label)
        except ChatError as exc:
            return error(str(exc))
        if model.accepts_images:
            return note("the picture goes with your next question.")
        gr.Warning(refusal_for_picture(model))
        return note(refusal_for_picture(model))

    def respond(text: str, image: str | None, history: list[dict[str, str]], shown: list[Any], label: str | None,
                system: str, temperature: float, top_p: float, max_new_tokens: float) -> Iterator[tuple]:
        """Stream one reply; outputs: conversation shown, text history, question box, picture, status."""
        question = (text or "").strip()
        if not question:
            yield (gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                   note("type a question about the picture first.") if image else gr.skip())
            return
        try:
            model = catalogue.find(label)
            if image and not model.accepts_images:
                raise ChatError(refusal_for_picture(model))
            if not cache.is_loaded(model):
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"Loading {model.label} …"
            backend = cache.get(model)
        except ChatError as exc:
            gr.Warning(str(exc))
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), error(str(exc))
            return
        settings = Decoding.from_temperature(float(temperature), float(top_p), int(max_new_tokens))
        asked = [*history, {"role": "user", "content": question}]
        shown = [*shown, *([{"role": "user", "content": {"path": image}}] if image else []),
                 {"role": "user", "content": question}]
        answer = ""
        status = f"Answering with {model.label} …"
        yield [*shown, {"role": "assistant", "content": ""}], history, "", None, status
        try:
            for piece in backend.stream(text_history(asked, system), settings, image=image or None):
                answer += piece
                yield [*shown, {"role": "assistant", "content": answer}], history, "", None, status
        except ChatError as exc:
            gr.Warning(str(exc))
            yield [*shown, {"role": "assistant", "content": answer or "(no reply)"}], history, question, image, \
                error(str(exc))
            return
        except Exception as exc:  # a bug, not the user's doing: keep the app up and say where to look
            logger.exception("chat: generation failed")
            message = f"unexpected {type(exc).__name__} while answering: {exc} (details in the server log)"
            gr.Warning(message)
            yield [*shown, {"role": "assistant", "content": answer or "(no reply)"}], history, question, image, \
                error(message)
            return
        done = backend.last.summary() if backend.last else "done"
        yield ([*shown, {"role": "assistant", "content": answer}],
               [*asked, {"role": "assistant", "content": answer}], "", None, f"{model.label}: {done}.")

    def transcribe(audio: str | None) -> tuple[Any, str, bool]:
        """The transcript into the question box; the flag says whether to send it."""
        if not audio:
            return gr.skip(), gr.skip(), False
        try:
            heard = transcriber.transcribe(audio, hotwords=hotwords)
        except ChatError as exc:
            gr.Warning(str(exc))
            return gr.skip(), error(str(exc)), False
        if not heard.text:
            return gr.skip(), note("no words heard in the recording."), False
        return heard.text, f"Heard ({heard.seconds:.1f} s): “{heard.text}”", True

    def respond_if_heard(send: bool, *args: Any) -> Iterator[tuple]:
        """`respond` to the transcript just put in the question box; the status keeps what was heard."""
        if not send:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        heard = f"Heard “{(args[0] or '').strip()}”. "
        for *outputs, status_text in respond(*args):
            yield (*outputs, heard + status_text if isinstance(status_text, str) else status_text)

    def clear() -> tuple[list, list, str]:
        return [], [], ""

    def ask(question: str, model: str = "", system: str = system_default, temperature: float = 0.0,
            top_p: float = 0.9, max_new_tokens: int = 200) -> str:
        """One question, one whole reply (API). `model` is a label from `models`; empty means the first."""
        try:
            chosen = catalogue.find(model or None)
            backend = cache.get(chosen)
            messages = text_history([{"role": "user", "content": question}], system)
            settings = Decoding.from_temperature(float(temperature), float(top_p), int(max_new_tokens))
            return "".join(backend.stream(messages, settings))
        except ChatError as exc:
            raise gr.Error(str(exc)) from None

    def models() -> list[str]:
        """The labels the dropdown offers, newest export first."""
        try:
            return [m.label for m in catalogue.models()]
        except ChatError as exc:
            raise gr.Error(str(exc)) from None

    with gr.Blocks(title="loretune chat") as app:
        gr.Markdown("## loretune chat\nAsk the fine-tuned lore models: type, speak, or add a picture.")
        status = gr.Markdown(startup, elem_id="status")
        with gr.Row(equal_height=True):
            chooser = gr.Dropdown(labels, value=labels[0] if labels else None, label="Model", elem_id="model",
                                  scale=6, filterable=False)
            reload = gr.Button("Refresh list", elem_id="refresh", scale=1, size="md")
        model_info = gr.Markdown(elem_id="model-info")
        shown = gr.Chatbot(label="Conversation", elem_id="chat", height=360, feedback_options=None)
        history = gr.State([])
        with gr.Row(equal_height=True):
            question = gr.Textbox(label="Question", placeholder="Ask about the lore …", elem_id="message",
                                  scale=6, lines=1, max_lines=4)
            send = gr.Button("Send", variant="primary", elem_id="send", scale=1)
            clear_button = gr.Button("Clear", elem_id="clear", scale=1, size="md")
        with gr.Row():
            voice = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Ask by voice",
                             elem_id="voice")
            picture = gr.Image(type="filepath", label="Picture (merged models only)", elem_id="picture",
                               sources=["upload", "clipboard"], height=200)
        with gr.Accordion("System prompt and decoding", open=False, elem_id="settings"):
            system = gr.Textbox(system_default, label="System prompt", elem_id="system", lines=2)
            with gr.Row():
                temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                        elem_id="temperature")
                top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p", elem_id="top_p")
                max_new = gr.Slider(16, 1024, value=200, step=16, label="Max new tokens", elem_id="max_new_tokens")
        heard = gr.State(False)

        respond_inputs = [question, picture, history, shown, chooser, system, temperature, top_p, max_new]
        respond_outputs = [shown, history, question, picture, status]
        common = {"concurrency_id": MODEL_EVENTS, "concurrency_limit": 1}
        # The chosen model loads when the page opens and on every change, and the line under the
        # dropdown says what it is (engine, pictures or not) or why it cannot be used.
        app.load(select_model, chooser, [model_info, temperature, top_p], api_visibility="private", **common)
        chooser.change(select_model, chooser, [model_info, temperature, top_p], api_visibility="private", **common)
        reload.click(refresh, chooser, [chooser, status], api_visibility="private")
        picture.upload(picture_added, [picture, chooser], status, api_visibility="private")
        question.submit(respond, respond_inputs, respond_outputs, api_visibility="private", **common)
        send.click(respond, respond_inputs, respond_outputs, api_visibility="private", **common)
        clear_button.click(clear, None, [shown, history, status], api_visibility="private")
        voice.change(transcribe, voice, [question, status, heard], api_visibility="private").then(
            respond_if_heard, [heard, *respond_inputs], respond_outputs, api_visibility="private", **common)
        gr.api(ask, api_name="ask", **common)
        gr.api(models, api_name="models")
    return app


def launch(store: str | Path, host: str = "127.0.0.1", port: int = 7860, **options: Any) -> None:
    """Build and serve until interrupted (what `loretune chat` runs).

    The server process gives torch half the cores (`default_threads`): the browser showing the
    reply, Whisper and the rest of the machine need the others, and torch's spinning threads
    collapse when they have to share.
    """
    import torch

    torch.set_num_threads(default_threads())
    app = build_app(store, **options)
    app.queue().launch(server_name=host, server_port=port, footer_links=["api"])
