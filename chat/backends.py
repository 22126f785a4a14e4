"""Talking to one model: transformers for model folders, llama.cpp for GGUF files.

Both backends take the same conversation (`[{"role", "content"}]`, system turn first if any) and
the same `Decoding` (model/generate.py), and `stream` yields the reply piece by piece, so the UI shows text as
it is generated. Both render the prompt as training did: the model folder's `loretune_chat.json`
(`model/chat_format.py ChatFormat`) folds a refused system turn into the first user turn and fixes the
date for templates that write one. transformers renders with the tokenizer's chat template;
llama.cpp with the template embedded in the GGUF (the converter copies the folder's), through
llama-cpp-python's own Jinja renderer, the one its `create_chat_completion` uses. Generation is
token by token in both, so each knows why it stopped: an end-of-generation token (`<|im_end|>` for
ChatML), the token limit, or the reader going away.

Anything that stops a model from answering is a `ChatError` whose message is meant for the person
in the UI (what is wrong, what to do), never a traceback.
"""

from __future__ import annotations

import codecs
import functools
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from loretune.model.generate import Decoding, stop_ids

Message = dict[str, str]


class ChatError(RuntimeError):
    """A model cannot answer this request; the message says why and what to do, for the UI."""


class ModelUnavailable(ChatError):
    """The model's files are missing, corrupt or not loadable."""


class ImagesNotSupported(ChatError):
    """A picture was sent to a model that reads text only."""


# What the UI starts with: greedy, 200 new tokens.
CHAT_DECODING = Decoding(max_new_tokens=200)


@dataclass
class Generation:
    """What the last `stream` did: what the UI's status line and the tests read."""

    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "running"  # "eos" | "length" | "stopped"
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        why = {"eos": "stopped at end of turn", "length": "stopped at the max new tokens limit",
               "stopped": "stopped early"}.get(self.finish_reason, self.finish_reason)
        return f"{len(self.tokens)} tokens in {self.seconds:.1f} s ({self.tokens_per_second:.1f} tokens/s), {why}"


class ChatBackend(Protocol):
    name: str
    accepts_images: bool
    last: Generation | None

    def stream(self, messages: Sequence[Message], settings: Decoding, image: str | Path | None = None
               ) -> Iterator[str]:
        """Yield the reply in pieces (their concatenation is the reply)."""
        ...


def reply(backend: ChatBackend, messages: Sequence[Message], settings: Decoding = CHAT_DECODING,
          image: str | Path | None = None) -> str:
    """The whole reply at once (for the API and tests)."""
    return "".join(backend.stream(messages, settings, image))


def default_threads() -> int:
    """Half the cores (llama-cpp-python's own default), for llama.cpp and for the chat server's torch.

    Both spin while their threads wait for each other, so asking for every core collapses as soon
    as anything else runs (a browser, a training run): measured on 2 cores beside a training run,
    llama.cpp gave 0.4 tokens/s with 2 threads and 30 with 1, and transformers' first reply with 2
    threads took 78 s for 60 tokens (about 4 s with 1).
    """
    return max(1, (os.cpu_count() or 2) // 2)


def _check_messages(messages: Sequence[Message]) -> None:
    if not messages or messages[-1].get("role") != "user":
        raise ChatError("a conversation must end with the user's question")


# --- transformers -----------------------------------------------------------------------------


class TransformersChat:
    """A model folder (base or merged export) on transformers; pictures through its projector.

    Generation runs in a thread feeding a `TextIteratorStreamer`; a stopping criterion watches an
    event, so a reader that stops reading (the UI's stop, a closed tab) stops the thread too.
    """

    def __init__(self, folder: str | Path, projector: str | Path | None = None, name: str | None = None):
        import torch

        from loretune.model.chat_format import ChatFormat
        from loretune.model.loading import default_device, load_base

        self.folder = Path(folder)
        self.name = name or self.folder.name
        if not (self.folder / "config.json").is_file():
            raise ModelUnavailable(f"{self.name}: no model folder at {self.folder} (missing or incomplete; "
                                   "re-run the stage that made it)")
        self.device = default_device()
        try:
            self.tokenizer, self.model = load_base(str(self.folder), self.device)
        except Exception as exc:  # corrupt weights, a bad config: say which model and why
            raise ModelUnavailable(f"{self.name}: transformers cannot load {self.folder}: "
                                   f"{type(exc).__name__}: {exc}") from exc
        self.model.eval()
        self.format = ChatFormat.load(self.folder)
        self.eos_ids = stop_ids(self.model, self.tokenizer)
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        self.images = None
        if projector is not None:
            from loretune.chat.images import ImageInput

            self.images = ImageInput.attach(self.model, self.tokenizer, Path(projector), self.name)
        self.accepts_images = self.images is not None
        self.last: Generation | None = None
        self._torch = torch

    def close(self) -> None:
        """Let the weights go (the cache calls this before loading another model)."""
        self.model = None
        self.images = None

    def prompt_ids(self, messages: Sequence[Message], image_tokens: int = 0) -> list[int]:
        """The prompt as training renders it; with `image_tokens` placeholders opening the last user turn."""
        messages = [dict(m) for m in messages]
        if image_tokens:
            messages[-1:] = self.format.with_image(messages[-1:], image_tokens)
        return self.format.ids(self.tokenizer, messages, add_generation_prompt=True)

    def stream(self, messages: Sequence[Message], settings: Decoding, image: str | Path | None = None
               ) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        from loretune.model.generate import generate

        torch = self._torch
        _check_messages(messages)
        if image is not None and self.images is None:
            raise ImagesNotSupported(f"{self.name} has no image projector, so it cannot look at pictures: the "
                                     "picture was not sent. Choose an export's merged (transformers) model, or "
                                     "remove the picture.")
        features = self.images.features(image) if image is not None else None
        ids = self.prompt_ids(messages, self.images.spec.image_tokens if features is not None else 0)
        _check_length(self.name, len(ids), settings.max_new_tokens, self.max_positions)
        input_ids = torch.tensor([ids], device=self.device)
        attention_mask = torch.ones_like(input_ids)
        if features is not None:
            from loretune.multimodal.fusion import fuse

            with torch.no_grad():
                fused = fuse(self.model, input_ids, attention_mask, features.to(self.device))
            inputs: dict[str, Any] = {"inputs_embeds": fused["inputs_embeds"], "attention_mask": attention_mask}
        else:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}

        streamer = _recording_streamer_class()(self.tokenizer, skip_special_tokens=True, timeout=600)
        cancelled = threading.Event()

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancelled.is_set()

        failure: list[BaseException] = []

        def run() -> None:
            try:
                generate(self.model, settings, inputs=inputs, eos_ids=sorted(self.eos_ids),
                         pad_id=self.tokenizer.pad_token_id, streamer=streamer,
                         stopping_criteria=StoppingCriteriaList([_Cancelled()]))
            except BaseException as exc:  # surfaced to the reader below
                failure.append(exc)
                streamer.end()

        self.last = generation = Generation(prompt_tokens=len(ids))
        started = time.monotonic()
        thread = threading.Thread(target=run, name=f"generate-{self.name}", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
            thread.join()
            if failure:
                raise ChatError(f"{self.name}: generation failed: {type(failure[0]).__name__}: {failure[0]}")
        finally:
            cancelled.set()
            thread.join()
            generation.tokens = list(streamer.token_ids)
            generation.seconds = time.monotonic() - started
            generation.finish_reason = _finish_reason(generation.tokens, self.eos_ids, settings.max_new_tokens)


@functools.cache
def _recording_streamer_class() -> type:
    """Built on first use: importing transformers is slow, and this module is imported by the UI early."""
    from transformers import TextIteratorStreamer

    class RecordingStreamer(TextIteratorStreamer):
        """A `TextIteratorStreamer` that also keeps the generated token ids (to tell EOS from the limit).

        The first `put` is the prompt (empty when generating from `inputs_embeds`), which it skips.
        """

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, skip_prompt=True, **kwargs)
            self.token_ids: list[int] = []
            self._seen_prompt = False

        def put(self, value: Any) -> None:
            if self._seen_prompt:
                self.token_ids.extend(int(t) for t in value.reshape(-1).tolist())
            self._seen_prompt = True
            super().put(value)

    return RecordingStreamer


def _finish_reason(tokens: list[int], eos_ids: set[int], max_new_tokens: int) -> str:
    if tokens and tokens[-1] in eos_ids:
        return "eos"
    return "length" if len(tokens) >= max_new_tokens else "stopped"


def _check_length(name: str, prompt_tokens: int, max_new_tokens: int, context: int) -> None:
    if context and prompt_tokens + max_new_tokens > context:
        raise ChatError(f"{name}: the conversation ({prompt_tokens} tokens) plus {max_new_tokens} new tokens "
                        f"exceeds the model's context of {context} tokens: clear the chat or lower max new tokens")


# --- llama.cpp --------------------------------------------------------------------------------


GGUF_MAGIC = b"GGUF"


class LlamaCppChat:
    """One GGUF file on llama-cpp-python; text only.

    The prompt is the GGUF's embedded chat template rendered by llama-cpp-python's
    `Jinja2ChatFormatter` (as `create_chat_completion` would), after `ChatFormat` from the export's
    merged folder beside the file (`export/<v>/merged/`) has adjusted the messages. Tokens are then
    generated one at a time and the loop ends on llama.cpp's end-of-generation test, the same one
    its completion API uses.
    """

    accepts_images = False

    def __init__(self, path: str | Path, name: str | None = None, format_dir: str | Path | None = None,
                 n_ctx: int = 4096, n_threads: int | None = None):
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from loretune.model.chat_format import ChatFormat

        self.path = Path(path)
        self.name = name or self.path.name
        check_gguf(self.path, self.name)
        threads = n_threads or default_threads()
        try:
            self.llm = Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                             seed=0, verbose=False)
        except Exception as exc:  # llama.cpp says only "Failed to load model from file"
            raise ModelUnavailable(f"{self.name}: llama.cpp cannot load {self.path} (corrupt or truncated GGUF? "
                                   f"re-run the export): {exc}") from exc
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelUnavailable(f"{self.name}: {self.path.name} carries no chat template, so a conversation "
                                   "cannot be rendered as the model was trained: re-export it from a model folder "
                                   "whose tokenizer has one")
        self.eos = self.llm.token_eos()
        self.formatter = Jinja2ChatFormatter(template=template, eos_token=self._text(self.eos),
                                             bos_token=self._text(self.llm.token_bos()))
        folder = Path(format_dir) if format_dir else None
        self.format = ChatFormat.load(folder) if folder and folder.is_dir() else ChatFormat()
        self.n_ctx = self.llm.n_ctx()
        self.last: Generation | None = None

    def close(self) -> None:
        """Free llama.cpp's model and context now, not in `__del__` at interpreter exit (noisy there)."""
        self.llm.close()

    def _text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def is_end(self, token: int) -> bool:
        """llama.cpp's own end-of-generation test (EOS, EOT, ...), as in its completion API."""
        import llama_cpp

        try:
            return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))
        except AttributeError:  # an older binding: EOS alone
            return token == self.eos

    def prompt(self, messages: Sequence[Message]) -> str:
        return self.formatter(messages=self.format.messages(list(messages)), **self.format.template_kwargs).prompt

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        # The template writes every special token itself (as with transformers' apply_chat_template).
        return self.llm.tokenize(self.prompt(messages).encode("utf-8"), add_bos=False, special=True)

    def stream(self, messages: Sequence[Message], settings: Decoding, image: str | Path | None = None
               ) -> Iterator[str]:
        if image is not None:
            raise ImagesNotSupported(f"{self.name} is a GGUF file run by llama.cpp, which reads text only here: "
                                     "the picture was not sent. Choose an export's merged (transformers) model to "
                                     "ask about a picture, or remove the picture.")
        _check_messages(messages)
        ids = self.prompt_ids(messages)
        _check_length(self.name, len(ids), settings.max_new_tokens, self.n_ctx)
        if settings.greedy:
            sampling: dict[str, Any] = {"temp": 0.0}
        else:
            self.llm.set_seed(settings.seed)
            temperature, top_p, top_k = settings.sampling()
            sampling = {"temp": temperature, "top_p": top_p, "top_k": top_k, "min_p": 0.0}
        self.last = generation = Generation(prompt_tokens=len(ids))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        ended = False
        started = time.monotonic()
        try:
            for token in self.llm.generate(ids, reset=True, repeat_penalty=settings.repetition_penalty, **sampling):
                generation.tokens.append(int(token))
                if self.is_end(token):
                    ended = True
                    break
                piece = decoder.decode(self.llm.detokenize([token], prev_tokens=ids + generation.tokens[:-1]))
                if piece:
                    yield piece
                if len(generation.tokens) >= settings.max_new_tokens:
                    break
            rest = decoder.decode(b"", final=True)
            if rest:
                yield rest
        finally:
            generation.seconds = time.monotonic() - started
            generation.finish_reason = "eos" if ended else (
                "length" if len(generation.tokens) >= settings.max_new_tokens else "stopped")


def check_gguf(path: Path, name: str) -> None:
    """A clear message for a missing or non-GGUF file before llama.cpp tries (it only says 'failed')."""
    if not path.is_file():
        raise ModelUnavailable(f"{name}: the GGUF file {path} is missing (an incomplete export? re-run the export)")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelUnavailable(f"{name}: {path.name} is not a GGUF file (it starts with {magic!r}, not "
                               f"{GGUF_MAGIC!r}): the export is corrupt; re-run the export")
