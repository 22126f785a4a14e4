"""Chat examples to token ids and loss labels, shared by training and evaluation.

The loss covers the assistant's answer only. The boundary is found by rendering the conversation
without its answer (with the generation prompt) and checking it is a prefix of the full render,
which works for any tokenizer's chat template, not only ones with `{% generation %}` markers.
Evaluation scores an option with the very same split, so train and eval see identical prompts.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


def _ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> dict[str, list[int]]:
    """`messages` ends with the assistant's answer; labels mask everything before it."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError(f"a training example must end with an assistant turn, got {messages[-1:]}")
    prompt = _ids(tokenizer, messages[:-1], add_generation_prompt=True)
    full = _ids(tokenizer, messages, add_generation_prompt=False)
    if full[: len(prompt)] != prompt:
        raise ValueError("chat template renders the prompt differently with and without the answer")
    # A prompt that fills max_length leaves nothing to learn: all labels IGNORE, counted by the
    # caller's label check rather than failing the whole run for one long example.
    truncated = len(full) > max_length
    full = full[:max_length]
    labels = [IGNORE] * min(len(prompt), max_length) + full[len(prompt):]
    return {"input_ids": full, "labels": labels, "truncated": truncated}
