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

from peft import PeftModel

from loretune.model.chat_format import question_messages
from loretune.model.checkpoints import load_for_checkpoints
from loretune.model.generate import Decoding, generate


@dataclass(frozen=True)
class Answer:
    question: str
    base: str
    tuned: str


def greedy_answers(base_model: str, checkpoint: Path, questions: list[str], system: str,
                   max_new_tokens: int = 48, attn_implementation: str = "sdpa") -> list[Answer]:
    loaded = load_for_checkpoints(base_model, checkpoint.parent, attn_implementation)
    tokenizer, fmt = loaded.tokenizer, loaded.fmt
    model = PeftModel.from_pretrained(loaded.model, str(checkpoint)).eval()
    decoding = Decoding(max_new_tokens=max_new_tokens)  # greedy
    answers = []
    for question in questions:
        ids = fmt.ids(tokenizer, question_messages(system, question), add_generation_prompt=True)
        with model.disable_adapter():
            base = _answer(model, tokenizer, ids, decoding)
        answers.append(Answer(question, base, _answer(model, tokenizer, ids, decoding)))
    return answers


def _answer(model: Any, tokenizer: Any, ids: list[int], decoding: Decoding) -> str:
    new = generate(model, decoding, input_ids=ids, eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def markdown(domain: str, checkpoint: str, answers: list[Answer], promoted: bool) -> str:
    label = f"`{checkpoint}`" + ("" if promoted else " (the last checkpoint; nothing was promoted)")
    rows = "\n".join(f"| {_cell(a.question)} | {_cell(a.base)} | {_cell(a.tuned)} |" for a in answers)
    return (f"### {domain}: before and after\n\nGreedy answers of the base model and of {label}.\n\n"
            f"| question | base | fine-tuned |\n|---|---|---|\n{rows}\n")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "(empty)"
