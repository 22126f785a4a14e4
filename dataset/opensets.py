"""Open-question evaluation sets: what the model *says*, scored against a reference answer.

Binary choice measures which of two options a model prefers; a chat user meets what it writes.
Two open sets are built with every dataset, from the same pages as the training examples and
without a model:

- `facts_open`: one question per (page, infobox field), in a wording no training example uses
  (`OPEN_FACT_TEMPLATE`). The accepted answers are the field's values, each with the alternative
  spellings the page itself gives (a parenthesis in the value, "Sunagakure (Village Hidden in the
  Sand)", or an apposition in the prose, "Sunagakure, the Village Hidden in the Sand,"); the
  reference is one sentence stating them. Fields whose value is a non-answer ("None") are left out.
- `prose_open`: a sentence of the lore's prose (a wiki page, an article section, a video
  transcript) that relates the page's subject to another name the lore knows, asked by template:
  "What does the lore say about {subject} and {name}?". Only names that occur in exactly one
  sentence of the page are asked about, so the reference is the one sentence that answers; at
  most `PROSE_PER_PAGE` per page, so no page dominates.

Every question passes the dataset's decontamination (exact and MinHash near-duplicate against
every training prompt) and every item's answer is checked to be *in* the training text: the value
for `facts_open`, the whole sentence for `prose_open`. What the model is asked is never trained;
what it should say always is.

User open sets (`evaluation.open_sets`) are JSON (a list) or JSONL of
`{"question": str, "reference": str, "answers": [str, ...]}` (`answers`, the aliases a reply may
contain to count as a match, is optional), validated here before any work.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from loretune.dataset.evalsets import (
    EvalSetError,
    Page,
    UserSet,
    entity_kinds,
    normalise,
    read_items,
    related,
    sentences,
)
from loretune.dataset.layout import EVAL_DIR
from loretune.hashing import file_sha256

OPEN_SETS = ("facts_open", "prose_open")
OPEN_FACT_TEMPLATE = "Which {field} does the lore give for {title}?"
PROSE_TEMPLATE = "What does the lore say about {title} and {name}?"
PROSE_SOURCE_TEMPLATE = 'What does "{title}" say about {name}?'  # an article or a video, not a wiki page
PROSE_PER_PAGE = 3
NON_ANSWERS = {"none", "unknown", "n a", "na", "no", "nothing", "tbd"}


# --- facts_open --------------------------------------------------------------------------------


def aliases(value: str, text: str) -> list[str]:
    """The value and the spellings of it the page gives: a parenthesis ("X (Y)" gives X and Y),
    and an apposition of capitalised words in the prose ("X, the Village Hidden in the Sand,")."""
    found = [value]
    bare = re.match(r"^(.*?)\s*\(([^()]+)\)\s*$", value)
    if bare:
        found += [bare.group(1), bare.group(2)]
    name = r"[A-Z][\w'-]*(?: (?:[A-Z][\w'-]*|of|in|the|and))*"  # "Village Hidden in the Sand"
    for match in re.finditer(rf"(?<!\w){re.escape(value)}(, the|,? \() ?({name})[,.)]", text):
        if len(match.group(2).split()) <= 6:
            found.append(("the " if match.group(1) == ", the" else "") + match.group(2))
    return list(dict.fromkeys(a.strip() for a in found if a.strip()))


def _joined(values: Sequence[str]) -> str:
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} and {values[-1]}"


def facts_open_set(pages: Sequence[Page]) -> list[dict[str, Any]]:
    """One item per (page, field) with a real answer; every value of the field is accepted."""
    items = []
    for page in pages:
        for key, values in sorted(page.facts.items()):
            values = [v for v in values if normalise(v) not in NON_ANSWERS]
            if not values:
                continue
            accepted = list(dict.fromkeys(a for v in values for a in aliases(v, page.text)))
            verb = "is" if len(values) == 1 else "are"
            items.append({"set": "facts_open", "question": OPEN_FACT_TEMPLATE.format(field=key, title=page.title),
                          "reference": f"The {key} of {page.title} {verb} {_joined(values)}.", "answers": accepted,
                          "doc_id": page.doc_id, "field": key})
    return items


# --- prose_open --------------------------------------------------------------------------------


def prose_open_set(pages: Sequence[Page], rng: random.Random) -> list[dict[str, Any]]:
    """Per page, up to `PROSE_PER_PAGE` sentences relating its subject to a name the lore knows."""
    names = sorted(entity_kinds(pages), key=lambda n: (-len(n), n))
    items = []
    for page in pages:
        said = sentences(page.text)
        candidates = []
        for name in names:
            if related(name, page.title):
                continue
            holding = [s for s in said if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", s)]
            if len(holding) == 1 and not any(c[1] == holding[0] for c in candidates):
                candidates.append((name, holding[0]))
        rng.shuffle(candidates)
        template = PROSE_TEMPLATE if page.kind or page.doc_id.startswith("fandom:") else PROSE_SOURCE_TEMPLATE
        for name, sentence in sorted(candidates[:PROSE_PER_PAGE], key=lambda c: said.index(c[1])):
            items.append({"set": "prose_open", "question": template.format(title=page.title, name=name),
                          "reference": sentence, "answers": [], "doc_id": page.doc_id, "field": name})
    return items


# --- checks and sampling -----------------------------------------------------------------------


def taught(items: Iterable[dict[str, Any]], training_text: str) -> tuple[list[dict[str, Any]], int]:
    """Keep the items whose answer training teaches: a fact's value, or the whole reference
    sentence of a prose item, occurs (normalised) in the training text. Returns kept and dropped."""
    corpus = f" {normalise(training_text)} "
    kept, dropped = [], 0
    for item in items:
        needles = item["answers"] or [item["reference"]]
        if any(f" {normalise(n)} " in corpus for n in needles if normalise(n)):
            kept.append(item)
        else:
            dropped += 1
    return kept, dropped


def sample_open(items: Sequence[dict[str, Any]], max_items: int | None, seed: int) -> list[dict[str, Any]]:
    """At most `max_items`, seeded, round-robin over fields (or, in prose, pages), so a cap keeps
    every field's share instead of the most common field's."""
    if max_items is None or len(items) <= max_items:
        return list(items)
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        key = item.get("field", "") if item.get("set") == "facts_open" else item.get("doc_id", "")
        groups.setdefault(key, []).append(i)
    queues = [rng.sample(ix, len(ix)) for _, ix in sorted(groups.items())]
    rng.shuffle(queues)
    chosen: list[int] = []
    while len(chosen) < max_items:
        for queue in queues:
            if queue and len(chosen) < max_items:
                chosen.append(queue.pop())
    return [items[i] for i in sorted(chosen)]


# --- user-supplied open sets -------------------------------------------------------------------


def read_open_set(path: Path) -> list[dict[str, Any]]:
    """An open set file, every item validated; errors name the file, the item and the problem."""
    path = Path(path)
    raw = read_items(path, "open evaluation set")
    if not raw:
        raise EvalSetError(f"{path}: the open evaluation set has no items")
    return [_validate_open(path, i, item) for i, item in enumerate(raw, start=1)]


def _validate_open(path: Path, number: int, item: Any) -> dict[str, Any]:
    where = f"{path}: item {number}"
    if not isinstance(item, dict):
        raise EvalSetError(f"{where}: expected an object with question and reference, got {type(item).__name__}")
    for key in ("question", "reference"):
        if key not in item:
            raise EvalSetError(f"{where}: missing {key!r}")
        if not isinstance(item[key], str) or not item[key].strip():
            raise EvalSetError(f"{where}: {key!r} must be a non-empty string, got {item[key]!r}")
    answers = item.get("answers", [])
    if not isinstance(answers, list) or not all(isinstance(a, str) and normalise(a) for a in answers):
        raise EvalSetError(f"{where}: 'answers' must be a list of non-empty strings (aliases), got {answers!r}")
    unknown = sorted(set(item) - {"question", "reference", "answers", "doc_id", "field", "set"})
    if unknown:
        raise EvalSetError(f"{where}: unknown key(s) {', '.join(unknown)}; an open item has question, reference "
                           "and optionally answers")
    return {"set": path.stem, "question": item["question"], "reference": item["reference"], "answers": list(answers),
            "doc_id": str(item.get("doc_id", "")), "field": str(item.get("field", ""))}


def user_open_sets(paths: Sequence[str | Path], taken: Iterable[str], relative_to: Path | None = None) -> list[UserSet]:
    """Validate every user open set up front; its name is the file's stem and must be new."""
    found: dict[str, UserSet] = {}
    taken = set(taken) | set(OPEN_SETS)
    for path in paths:
        path = Path(path)
        if not path.is_absolute() and not path.exists() and relative_to and (relative_to / path).exists():
            path = (relative_to / path).resolve()
        read_open_set(path)
        if path.stem in taken or path.stem in found:
            raise EvalSetError(f"{path}: a set named {path.stem!r} already exists; rename the file")
        found[path.stem] = UserSet(path.stem, str(path), file_sha256(path))
    return list(found.values())


def load_user_open_set(user_set: UserSet) -> list[dict[str, Any]]:
    path = Path(user_set.path)
    if (file_sha256(path) if path.exists() else None) != user_set.sha256:
        raise EvalSetError(f"{path}: the open evaluation set changed while the flow ran; run it again")
    return [{**item, "set": user_set.name} for item in read_open_set(path)]


def load_open_sets(dataset_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The built-in open sets a dataset holds (a dataset built before they existed has none)."""
    found = {}
    for name in OPEN_SETS:
        path = Path(dataset_dir) / EVAL_DIR / f"{name}.jsonl"
        if path.exists():
            found[name] = [dict(item) for item in read_items(path, "open evaluation set")]
    return found
