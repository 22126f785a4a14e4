"""The model's own chat format, made safe to train and score with.

The chat template comes with the model (ChatML for SmolLM2), or from `model.chat_template`. The
model stage inspects it once (`inspect_template`) and records in the model folder how loretune must
use it, so training, evaluation, export and a chat UI all render conversations the same way:

- a template that rejects a system role gets the system prompt folded into the first user turn;
- a template that writes today's date (Llama 3's `strftime_now`) gets a fixed `date_string`, so
  the same data renders to the same tokens tomorrow; one that offers no way to fix it is refused;
- an image enters as `image_tokens` copies of one placeholder token at the start of the user turn
  (LLaVA-style); `multimodal.fusion.fuse` swaps them for the projector's soft tokens.

The loss covers the assistant's answers only: `encode_chat` labels every assistant turn of a
conversation, the last one exactly as TRL's prompt/completion split (`as_prompt_completion`,
`completion_only_loss`) labels it, and evaluation scores an option as that same completion.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

IGNORE = -100
FORMAT_FILE = "loretune_chat.json"
# A string no corpus contains; added to the tokenizer as one special token. Its id never reaches
# the embedding table (fuse replaces it), so the base model's vocabulary and weights are unchanged.
IMAGE_TOKEN = "<|loretune_image|>"
FIXED_DATE = "01 Jan 2026"  # what a date-writing template is told today is, always


class ChatTemplateError(ValueError):
    """The chat template cannot be used for training as it is; the message says why and what to do."""


@dataclass(frozen=True)
class ChatFormat:
    system_role: bool = True
    template_kwargs: dict[str, str] = field(default_factory=dict)
    image_token: str = IMAGE_TOKEN

    @classmethod
    def load(cls, model_dir: Path) -> "ChatFormat":
        path = Path(model_dir) / FORMAT_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self, model_dir: Path) -> None:
        (Path(model_dir) / FORMAT_FILE).write_text(json.dumps(asdict(self), indent=2, sort_keys=True))

    def messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """`messages` as this template takes them: a refused system turn folded into the first user turn."""
        if self.system_role or not messages or messages[0]["role"] != "system":
            return [dict(m) for m in messages]
        system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
        for message in rest:
            if message["role"] == "user":
                message["content"] = f"{system}\n\n{message['content']}" if system else message["content"]
                break
        return rest

    def with_image(self, messages: list[dict[str, str]], n_tokens: int) -> list[dict[str, str]]:
        """The first user turn opens with the image's placeholder tokens."""
        out = [dict(m) for m in messages]
        for message in out:
            if message["role"] == "user":
                message["content"] = self.image_token * n_tokens + "\n" + message["content"]
                return out
        raise ValueError("an image needs a user turn to sit in")

    def render(self, tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(self.messages(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt, **self.template_kwargs)

    def ids(self, tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        out = tokenizer.apply_chat_template(self.messages(messages), tokenize=True,
                                            add_generation_prompt=add_generation_prompt, **self.template_kwargs)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def as_prompt_completion(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """A training example in TRL's conversational prompt/completion format."""
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(f"a training example must end with an assistant turn, got {messages[-1:]}")
        row: dict[str, Any] = {"prompt": self.messages(messages[:-1]), "completion": [dict(messages[-1])]}
        if self.template_kwargs:
            row["chat_template_kwargs"] = dict(self.template_kwargs)
        return row


def question_messages(system: str, question: str) -> list[dict[str, str]]:
    """One question as every stage asks it: the system prompt (if any), then the user's turn.
    Evaluation, the before/after, the parity probes and the chat UI all start a conversation so."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]


def inspect_template(tokenizer: Any, template_name: str) -> ChatFormat:
    """How loretune must use this tokenizer's chat template; refuses one it cannot use safely."""
    template = tokenizer.chat_template
    if not template:
        raise ChatTemplateError(f"{template_name} has no chat template; set model.chat_template to one "
                                "(a Jinja string, e.g. ChatML)")
    if not isinstance(template, str):
        raise ChatTemplateError(f"{template_name} has several named chat templates; set model.chat_template "
                                "to the one to train with")
    kwargs: dict[str, str] = {}
    if "strftime_now" in template:
        if "date_string" not in template:
            raise ChatTemplateError(
                f"the chat template of {template_name} writes today's date (strftime_now) and offers no "
                "date_string to fix it, so the same data would train on different tokens each day; set "
                "model.chat_template to a template without the date")
        kwargs["date_string"] = FIXED_DATE
    probe = [{"role": role, "content": f"loretune probe {role}"} for role in ("system", "user", "assistant")]
    fmt = ChatFormat(system_role=True, template_kwargs=kwargs)
    try:
        rendered = fmt.render(tokenizer, probe, add_generation_prompt=False)
        system_role = "loretune probe system" in rendered
    except Exception:  # Jinja's TemplateError: raise_exception("System role not supported")
        system_role = False
    fmt = ChatFormat(system_role=system_role, template_kwargs=kwargs)
    try:
        rendered = fmt.render(tokenizer, probe, add_generation_prompt=False)
    except Exception as exc:
        raise ChatTemplateError(f"the chat template of {template_name} cannot render a (system, user, "
                                f"assistant) conversation: {exc}") from None
    if not all(message["content"] in rendered for message in probe):
        raise ChatTemplateError(f"the chat template of {template_name} drops part of a conversation")
    return fmt


def add_image_token(tokenizer: Any) -> int:
    """The placeholder as one special token; its id (past the model's vocabulary is fine)."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def strip_added_token(folder: Path, token: str) -> None:
    """Take loretune's image placeholder out of a saved tokenizer.

    It was added past the model's vocabulary (fusion swaps it out before the embedding lookup), so
    a tokenizer that keeps it names an id the merged model has no row for, and llama.cpp's converter
    refuses a vocabulary larger than the model's. Serving text needs no placeholder; the chat UI
    adds it back when it loads the projector.
    """
    def keep(entry: Any) -> bool:
        return (entry.get("content") if isinstance(entry, dict) else entry) != token

    # Where transformers' tokenizer files list added tokens: lists of strings or {"content": ...}
    # entries, the id -> entry map of tokenizer_config.json, and added_tokens.json's token -> id.
    places = {"tokenizer.json": ["added_tokens"], "special_tokens_map.json": ["additional_special_tokens"],
              "tokenizer_config.json": ["added_tokens_decoder", "additional_special_tokens", "extra_special_tokens"]}
    for name, keys in places.items():
        path = folder / name
        if path.exists():
            data = json.loads(path.read_text())
            for key in keys:
                if isinstance(data.get(key), list):
                    data[key] = [entry for entry in data[key] if keep(entry)]
                elif key == "added_tokens_decoder" and isinstance(data.get(key), dict):
                    data[key] = {k: v for k, v in data[key].items() if keep(v)}
            path.write_text(json.dumps(data, ensure_ascii=False, indent=2))
    added = folder / "added_tokens.json"
    if added.exists():
        added.write_text(json.dumps({k: v for k, v in json.loads(added.read_text()).items() if k != token}, indent=2))


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], max_length: int,
                fmt: ChatFormat | None = None) -> dict[str, Any]:
    """Token ids and labels for training: the loss covers every assistant turn (each answer and the
    end-of-turn the template closes it with), so a conversation packed with several questions about
    one page teaches every answer; and whether `max_length` cut an answer.

    Each answer's span is where the conversation up to it leaves the same conversation asked for
    its next reply (`add_generation_prompt`), as TRL's prompt/completion split finds the last one.
    A template that rewrites earlier turns when a later one follows (one that strips reasoning,
    say) has no stable prefix: there only the last answer is labelled, as TRL would label it.
    """
    fmt = fmt or ChatFormat()
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError(f"a training example must end with an assistant turn, got {messages[-1:]}")
    full = fmt.ids(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        asked = fmt.ids(tokenizer, messages[:i], add_generation_prompt=True)
        through = full if i == len(messages) - 1 else fmt.ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        start = next((j for j, (a, b) in enumerate(zip(asked, through)) if a != b), min(len(asked), len(through)))
        if through != full[: len(through)]:  # no stable prefix: the last answer only
            spans = []
            continue
        spans.append((start, len(through)))
    truncated = any(end > max_length for _, end in spans)
    full = full[:max_length]
    labels = [IGNORE] * len(full)
    for start, end in spans:
        labels[start:end] = full[start:end]
    return {"input_ids": full, "labels": labels, "truncated": truncated}
