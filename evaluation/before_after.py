"""What fine-tuning changed, in words: greedy answers of the base and of one checkpoint to a few
fixed lore questions, side by side.

Accuracy tables say how much; this says what. Greedy decoding, so the same checkpoint always gives
the same answers and a change between runs is a change in the model. One load: the checkpoint's
adapter on the base, switched off for the base's answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from loretune.training.sft import load_for_checkpoints


@dataclass(frozen=True)
class Answer:
    question: str
    base: str
    tuned: str


def greedy_answers(base_model: str, checkpoint: Path, questions: list[str], system: str,
                   max_new_tokens: int = 48, attn_implementation: str = "sdpa") -> list[Answer]:
    loaded = load_for_checkpoints(base_model, checkpoint.parent, attn_implementation)
    tokenizer, fmt, device = loaded.tokenizer, loaded.fmt, loaded.device
    model = PeftModel.from_pretrained(loaded.model, str(checkpoint)).eval()
    answers = []
    for question in questions:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        ids = torch.tensor([fmt.ids(tokenizer, messages, add_generation_prompt=True)], device=device)
        with model.disable_adapter():
            base = _generate(model, tokenizer, ids, max_new_tokens)
        answers.append(Answer(question, base, _generate(model, tokenizer, ids, max_new_tokens)))
    return answers


@torch.no_grad()
def _generate(model: Any, tokenizer: Any, ids: torch.Tensor, max_new_tokens: int) -> str:
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, temperature=None, top_p=None, top_k=None,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def markdown(domain: str, checkpoint: str, answers: list[Answer], promoted: bool) -> str:
    label = f"`{checkpoint}`" + ("" if promoted else " (the last checkpoint; nothing was promoted)")
    rows = "\n".join(f"| {_cell(a.question)} | {_cell(a.base)} | {_cell(a.tuned)} |" for a in answers)
    return (f"### {domain}: before and after\n\nGreedy answers of the base model and of {label}.\n\n"
            f"| question | base | fine-tuned |\n|---|---|---|\n{rows}\n")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "(empty)"
