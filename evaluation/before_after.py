"""What fine-tuning changed, in words: the base's and one checkpoint's answers to a few fixed lore
questions, side by side.

Accuracy tables say how much; this says what. The answers are the `probes` open set's
(`evaluation/open_questions.py`), generated like every other open-question cell at the gate's
decoding point (greedy by default), so the before/after, the table and the chat never disagree on
how an answer is generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Answer:
    question: str
    base: str
    tuned: str


def from_answers(answers: Iterable[dict[str, Any]], set_name: str, step: int) -> list[Answer]:
    """Step 0's and `step`'s answers to the items of `set_name`, paired item by item, from the
    open-question answers (`answers.jsonl` rows)."""
    by_item = {(a["step"], a["item"]): a for a in answers if a["set"] == set_name}
    return [Answer(by_item[(0, i)]["question"], by_item[(0, i)]["answer"], by_item[(step, i)]["answer"])
            for i in sorted(i for s, i in by_item if s == 0) if (step, i) in by_item]


def markdown(domain: str, checkpoint: str, answers: list[Answer], promoted: bool, decoding: str = "greedy") -> str:
    label = f"`{checkpoint}`" + ("" if promoted else " (the last checkpoint; nothing was promoted)")
    rows = "\n".join(f"| {_cell(a.question)} | {_cell(a.base)} | {_cell(a.tuned)} |" for a in answers)
    return (f"### {domain}: before and after\n\nAnswers of the base model and of {label} ({decoding}).\n\n"
            f"| question | base | fine-tuned |\n|---|---|---|\n{rows}\n")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "(empty)"
