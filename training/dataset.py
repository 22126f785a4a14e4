"""Documents to chat examples, plus the binary-choice evaluation set.

The model must learn the lore, so every fact an evaluation question asks about is taught in
training: in the page's prose and as short question/answer turns. What training never sees is the
evaluation question itself: eval questions use their own phrasing, and any that still matches a
training prompt exactly or nearly (word-set Jaccard) is dropped and counted on every build.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from datasets import Dataset, DatasetDict

# Training phrasings of a fact question. Answers are the bare value, which is also what an
# evaluation option is scored as, so a fact learnt in training is measured as itself.
TRAIN_FACT_TEMPLATES = (
    "What is the {field} of {title}?",
    "Name the {field} of {title}.",
    "{title}: {field}?",
)
EVAL_FACT_TEMPLATE = "In the lore, which {field} goes with {title}?"
TRAIN_IMAGE_TEMPLATES = (
    "Who or what is shown in this picture?",
    "Name what this image depicts.",
    "What is this a picture of?",
    "Identify the subject of this image.",
)
EVAL_IMAGE_TEMPLATE = "Which name fits the picture above?"
ABOUT_TEMPLATES = ("Tell me about {title}.", "What else is known about {title}? Part {part}.")

SKIP_FIELDS = {"name", "image", "caption", "title"}


@dataclass
class LorePage:
    """What the dataset needs from a document: plain values, no ingest types."""

    doc_id: str
    title: str
    text: str
    facts: dict[str, str]
    image: str | None  # sha256 of the page's main image, if it was fetched and valid


@dataclass
class BuildReport:
    train: int = 0
    validation: int = 0
    eval_questions: int = 0
    eval_image_questions: int = 0
    dropped_exact: int = 0
    dropped_near_duplicate: int = 0
    dropped_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def pages_from_documents(documents: Iterable[Any], image_sha_by_url: dict[str, str]) -> list[LorePage]:
    pages = []
    for doc in documents:
        meta = doc.meta if isinstance(doc.meta, dict) else json.loads(doc.meta or "{}")
        facts = {
            key: ", ".join(v) if isinstance(v, list) else str(v)
            for key, v in (meta.get("infobox") or {}).items()
            if key not in SKIP_FIELDS and v
        }
        image = next((image_sha_by_url[u] for u in doc.image_urls if u in image_sha_by_url), None)
        pages.append(LorePage(doc_id=f"{doc.source}:{doc.id}", title=doc.title, text=doc.text, facts=facts, image=image))
    return sorted(pages, key=lambda p: p.doc_id)


def chunk_prose(text: str, max_chars: int) -> list[str]:
    """Split prose into answer-sized chunks at sentence boundaries."""
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    chunks, current = [], ""
    for sentence in sentences:
        if current and len(current) + 1 + len(sentence) > max_chars:
            chunks.append(current)
            current = ""
        current = f"{current} {sentence}".strip()[:max_chars]
    return [c for c in chunks + [current] if c]


def training_examples(pages: Sequence[LorePage], system: str, max_answer_chars: int) -> list[dict[str, Any]]:
    def example(user: str, answer: str, kind: str, page: LorePage, image: str = "") -> dict[str, Any]:
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
        return {"messages": messages, "image_sha256": image, "kind": kind, "doc_id": page.doc_id}

    rows = []
    for page in pages:
        for part, chunk in enumerate(chunk_prose(page.text, max_answer_chars), start=1):
            template = ABOUT_TEMPLATES[0] if part == 1 else ABOUT_TEMPLATES[1]
            rows.append(example(template.format(title=page.title, part=part), chunk, "prose", page))
        for key, value in page.facts.items():
            for template in TRAIN_FACT_TEMPLATES:
                rows.append(example(template.format(field=key, title=page.title), value, "fact", page))
        if page.image:
            for template in TRAIN_IMAGE_TEMPLATES:
                rows.append(example(template, page.title, "image", page, image=page.image))
    return rows


def evaluation_questions(pages: Sequence[LorePage], seed: int) -> list[dict[str, Any]]:
    """Two options per question: the page's value and another page's different value for the same field."""
    rng = random.Random(seed)
    values_by_field: dict[str, list[str]] = {}
    for page in pages:
        for key, value in page.facts.items():
            values_by_field.setdefault(key, []).append(value)
    questions = []
    for page in pages:
        for key, value in sorted(page.facts.items()):
            distractors = sorted({v for v in values_by_field[key] if v.lower() != value.lower()})
            if distractors:
                question = EVAL_FACT_TEMPLATE.format(field=key, title=page.title)
                questions.append(_binary(question, value, rng.choice(distractors), rng, "fact", key, page))
    pictured = [p for p in pages if p.image]
    for page in pictured:
        others = sorted(p.title for p in pictured if p.title != page.title)
        if others:
            q = _binary(EVAL_IMAGE_TEMPLATE, page.title, rng.choice(others), rng, "image", "image", page)
            questions.append({**q, "image_sha256": page.image})
    return questions


def _binary(question: str, right: str, wrong: str, rng: random.Random, kind: str, key: str, page: LorePage) -> dict[str, Any]:
    answer = rng.randrange(2)
    options = [wrong, right] if answer else [right, wrong]
    return {"question": question, "options": options, "answer": answer, "kind": kind,
            "field": key, "doc_id": page.doc_id, "image_sha256": ""}


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", text.lower()))


def decontaminate(
    questions: list[dict[str, Any]], train_prompts: Iterable[str], threshold: float, report: BuildReport
) -> list[dict[str, Any]]:
    """Drop eval questions that training saw verbatim or nearly; count and sample what was dropped.

    Quadratic in (questions x distinct prompts), which is fine for thousands; a MinHash index
    (datasketch) is the upgrade when the lore grows to millions of prompts.
    """
    seen_exact = {" ".join(p.lower().split()) for p in train_prompts}
    seen_words = [_words(p) for p in seen_exact]
    kept = []
    for q in questions:
        text = " ".join(q["question"].lower().split())
        if q["kind"] == "fact" and text in seen_exact:
            report.dropped_exact += 1
            report.dropped_examples.append(q["question"])
            continue
        words = _words(q["question"])
        if q["kind"] == "fact" and any(len(words & w) / len(words | w) >= threshold for w in seen_words if w):
            report.dropped_near_duplicate += 1
            report.dropped_examples.append(q["question"])
            continue
        kept.append(q)
    report.dropped_examples = report.dropped_examples[:20]
    return kept


def build_dataset(
    pages: Sequence[LorePage],
    out_dir: Path,
    *,
    domain: str,
    system_prompt: str,
    max_answer_chars: int,
    val_fraction: float,
    seed: int,
    near_duplicate_threshold: float,
) -> BuildReport:
    """Write `sft/` (train/validation chat examples) and `eval_binary/` under `out_dir`."""
    if not pages:
        raise ValueError("no documents to build a dataset from: did every source fail?")
    system = system_prompt.format(domain=domain)
    rows = training_examples(pages, system, max_answer_chars)
    random.Random(seed).shuffle(rows)
    n_val = int(len(rows) * val_fraction)
    splits = DatasetDict({"train": Dataset.from_list(rows[n_val:]), "validation": Dataset.from_list(rows[:n_val])})

    report = BuildReport(train=len(rows) - n_val, validation=n_val)
    # Image questions share a fixed wording with nothing page-specific; the check is about facts.
    train_prompts = {r["messages"][1]["content"] for r in rows}
    questions = decontaminate(evaluation_questions(pages, seed), train_prompts, near_duplicate_threshold, report)
    questions = [{**q, "system": system} for q in questions]
    if not questions:
        raise ValueError("no evaluation questions could be built: pages need infobox facts shared across pages")
    report.eval_questions = len(questions)
    report.eval_image_questions = sum(q["kind"] == "image" for q in questions)

    splits.save_to_disk(str(out_dir / "sft"))
    Dataset.from_list(questions).save_to_disk(str(out_dir / "eval_binary"))
    (out_dir / "build_report.json").write_text(json.dumps(report.as_dict(), indent=2))
    return report


def corpus_texts(dataset_dir: Path) -> list[str]:
    """Training text only (never eval questions), e.g. to train the tiny model's tokenizer."""
    train = DatasetDict.load_from_disk(str(dataset_dir / "sft"))["train"]
    return [m["content"] for row in train["messages"] for m in row]
