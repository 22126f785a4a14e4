"""Binary-choice evaluation sets that a model with no knowledge of the lore cannot pass.

A set measures lore only if nothing but knowing the page picks the right option. So every wrong
option is drawn from the same kind of thing (the same infobox field, the same kind of entity) and
chosen so that neither the more common string in the training text nor the shorter string is a
better guess than a coin: a greedy chooser keeps, across the set, the right answer the more common
one about as often as not, and the shorter one about as often as not. Options never contain each
other after normalisation ("Konohagakure" is never paired with "Konohagakure, Ninja Academy"), and
the right option sits first as often as second.

Three sets are built with every dataset, from the same pages the training examples come from:

- `facts`: one question per infobox value (multi-valued fields give one question per value);
- `synthetic`: cloze statements from the prose, an entity blanked and a same-kind entity offered
  beside it; larger and noisier than `facts`, as the seed project's synthetic set was;
- `pictures`: which page title fits the image.

User-supplied sets (JSON or JSONL of {question, choices, answer}) are validated here and scored the
same way; their baselines are reported but, unlike the built-in sets', not enforced.

Each set records its no-knowledge baselines (always first, the more common string in the training
text, the shorter string); a built-in set whose frequency or length baseline falls outside
0.5 ± 2 standard errors is a broken set, and the build fails naming it.
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from loretune.dataset.layout import EVAL_DIR, corpus_texts
from loretune.hashing import file_sha256
from loretune.stats import mean_stderr

BUILTIN_SETS = ("facts", "synthetic", "pictures")
FACT_TEMPLATE = "In the lore, which {field} goes with {title}?"
PICTURE_TEMPLATE = "Which name fits the picture above?"
CLOZE_TEMPLATE = "Which fills the blank? {statement}"
BLANK = "____"
BASELINES = ("always_first", "more_common", "shorter")
# Keep drawing the under-represented side; once one side leads by this many, skip questions
# that can only widen the lead.
MAX_LEAD = 2


class EvalSetError(ValueError):
    """An evaluation set is malformed or gives its answers away; the message names it."""


# --- strings -----------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Case, accents and punctuation folded away: "Chūnin" and "chunin," are one value."""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(c for c in folded if not unicodedata.combining(c)).casefold()
    return " ".join(re.findall(r"[a-z0-9]+", folded))


def related(a: str, b: str) -> bool:
    """Equal, or one a whole-word part of the other, once normalised: never a fair pair."""
    na, nb = f" {normalise(a)} ", f" {normalise(b)} "
    return na in nb or nb in na


class TextIndex:
    """How often a string occurs in the training text (case-insensitive, whole words)."""

    def __init__(self, texts: Iterable[str]):
        self.text = "\n".join(texts).casefold()
        self._counts: dict[str, int] = {}

    def count(self, value: str) -> int:
        key = value.casefold()
        if key not in self._counts:
            self._counts[key] = len(re.findall(rf"(?<!\w){re.escape(key)}(?!\w)", self.text)) if key else 0
        return self._counts[key]


# --- choosing the wrong option -----------------------------------------------------------------


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


@dataclass
class Balancer:
    """Picks distractors so that frequency and length say nothing about which option is right.

    For each question it knows whether, so far, the right answer was more often the more common
    string or the less common one (and likewise the shorter or the longer), and prefers a
    distractor that evens that out; among those, the one closest in frequency and length.
    """

    index: TextIndex
    rng: random.Random
    lead: dict[str, int] = field(default_factory=lambda: {"frequency": 0, "length": 0})
    skipped: int = 0

    def signs(self, right: str, wrong: str) -> dict[str, int]:
        """+1 where the right option is the more common / shorter one, -1 the other way, 0 a tie."""
        return {"frequency": _sign(self.index.count(right) - self.index.count(wrong)),
                "length": _sign(len(wrong) - len(right))}

    def choose(self, right: str, candidates: Sequence[str]) -> str | None:
        pool = list(dict.fromkeys(candidates))
        self.rng.shuffle(pool)
        if not pool:
            return None

        def cost(wrong: str) -> float:
            signs = self.signs(right, wrong)
            against = sum(1 for k, s in signs.items() if s and _sign(self.lead[k]) == s)
            distance = (abs(math.log1p(self.index.count(wrong)) - math.log1p(self.index.count(right)))
                        + abs(math.log(len(wrong)) - math.log(len(right))))
            return 10.0 * against + distance

        wrong = min(pool, key=cost)
        signs = self.signs(right, wrong)
        if any(s and _sign(self.lead[k]) == s and abs(self.lead[k]) >= MAX_LEAD for k, s in signs.items()):
            self.skipped += 1
            return None
        for k, s in signs.items():
            self.lead[k] += s
        return wrong


# --- the built-in sets -------------------------------------------------------------------------


class Page(Protocol):
    """What the sets need from a page (the dataset's `LorePage` is one)."""

    doc_id: str
    title: str
    text: str
    kind: str | None  # the infobox type ("character", "jutsu"); None outside Fandom
    facts: dict[str, list[str]]
    image: str | None


def _item(set_name: str, question: str, right: str, wrong: str, page: Page, field_: str,
          image: str = "") -> dict[str, Any]:
    # Right first for now; `place_answers` balances the positions once the set is final.
    return {"set": set_name, "question": question, "choices": [right, wrong], "answer": 0,
            "doc_id": page.doc_id, "field": field_, "image_sha256": image}


def facts_set(pages: Sequence[Page], index: TextIndex, rng: random.Random) -> tuple[list[dict], int]:
    """One question per (page, field, value); the wrong value is another page's, for that field."""
    by_field: dict[str, list[str]] = {}
    for page in pages:
        for key, values in page.facts.items():
            by_field.setdefault(key, []).extend(values)
    wanted = [(page, key, value) for page in pages for key, values in sorted(page.facts.items()) for value in values]
    rng.shuffle(wanted)  # the balancer is greedy: no field should always go first
    balancer, items = Balancer(index, rng), []
    for page, key, value in wanted:
        own = page.facts[key]
        candidates = [v for v in sorted(set(by_field[key])) if not any(related(v, mine) for mine in own)]
        wrong = balancer.choose(value, candidates)
        if wrong is not None:
            items.append(_item("facts", FACT_TEMPLATE.format(field=key, title=page.title), value, wrong, page, key))
    return items, balancer.skipped


def pictures_set(pages: Sequence[Page], index: TextIndex, rng: random.Random) -> tuple[list[dict], int]:
    pictured = [p for p in pages if p.image]
    order = list(pictured)
    rng.shuffle(order)
    balancer, items = Balancer(index, rng), []
    for page in order:
        candidates = sorted(p.title for p in pictured if p.kind == page.kind and not related(p.title, page.title))
        wrong = balancer.choose(page.title, candidates)
        if wrong is not None:
            items.append(_item("pictures", PICTURE_TEMPLATE, page.title, wrong, page, "image", image=page.image or ""))
    return items, balancer.skipped


def entity_kinds(pages: Sequence[Page]) -> dict[str, set[str]]:
    """Names the lore knows, each with its kinds: page titles by infobox type, values by field.

    A value that the training text mostly writes in lower case ("Short", "Male") is an ordinary
    word, not a name, and blanking it would test English rather than lore.
    """
    kinds: dict[str, set[str]] = {}
    for page in pages:
        if page.kind:
            kinds.setdefault(page.title, set()).add(f"page:{page.kind}")
        for key, values in page.facts.items():
            for value in values:
                kinds.setdefault(value, set()).add(f"field:{key}")
    return {name: k for name, k in kinds.items()
            if len(name) >= 4 and name[:1].isupper() and not _mostly_lowercase(name, pages)}


def _mostly_lowercase(name: str, pages: Sequence[Page]) -> bool:
    cased = sum(len(re.findall(rf"(?<!\w){re.escape(name)}(?!\w)", p.text)) for p in pages)
    lower = sum(len(re.findall(rf"(?<!\w){re.escape(name.lower())}(?!\w)", p.text)) for p in pages)
    return lower > cased


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if 6 <= len(s.split()) <= 60]


def synthetic_set(pages: Sequence[Page], index: TextIndex, rng: random.Random) -> tuple[list[dict], int]:
    """Cloze statements from every page's prose: a named entity blanked, a same-kind one offered.

    A mention is only blanked when nothing else in the sentence gives it away: it occurs once, and
    none of its words (or the distractor's) appear elsewhere in the statement.
    """
    names = entity_kinds(pages)
    by_kind: dict[str, list[str]] = {}
    for name, kinds in names.items():
        for kind in kinds:
            by_kind.setdefault(kind, []).append(name)
    longest_first = sorted(names, key=lambda n: (-len(n), n))
    wanted = []
    for page in pages:
        for sentence in sentences(page.text):
            taken: list[tuple[int, int]] = []
            for name in longest_first:
                spans = [m.span() for m in re.finditer(rf"(?<!\w){re.escape(name)}(?!\w)", sentence)]
                if len(spans) != 1 or any(a < spans[0][1] and spans[0][0] < b for a, b in taken):
                    continue
                taken.append(spans[0])
                wanted.append((page, sentence, name, spans[0]))
    rng.shuffle(wanted)
    balancer, items, seen = Balancer(index, rng), [], set()
    for page, sentence, name, (start, end) in wanted:
        statement = sentence[:start] + BLANK + sentence[end:]
        rest = set(normalise(statement).split())
        if statement in seen or rest & set(normalise(name).split()):
            continue
        candidates = sorted({c for kind in names[name] for c in by_kind[kind]
                             if not related(c, name) and not rest & set(normalise(c).split())})
        wrong = balancer.choose(name, candidates)
        if wrong is not None:
            seen.add(statement)
            items.append(_item("synthetic", CLOZE_TEMPLATE.format(statement=statement), name, wrong, page,
                               sorted(names[name])[0]))
    return items, balancer.skipped


def place_answers(items: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Put the right option first in half the items and second in the other half (±1)."""
    positions = [i % 2 for i in range(len(items))]
    rng.shuffle(positions)
    placed = []
    for item, position in zip(items, positions):
        right, wrong = item["choices"][item["answer"]], item["choices"][1 - item["answer"]]
        choices = [right, wrong] if position == 0 else [wrong, right]
        placed.append({**item, "choices": choices, "answer": position})
    return placed


# --- baselines ---------------------------------------------------------------------------------


def _credit(scores: list[float], answer: int, best: float) -> float:
    """1 if the answer alone scores `best`, 1/k if it shares the top with k options, else 0."""
    top = [i for i, s in enumerate(scores) if s == best]
    return 1.0 / len(top) if answer in top else 0.0


def baselines(items: Sequence[dict[str, Any]], index: TextIndex) -> dict[str, dict[str, float]]:
    """What a model with no knowledge scores: each with its standard error (lm-eval's mean_stderr)."""
    per_item: dict[str, list[float]] = {name: [] for name in BASELINES}
    for item in items:
        choices, answer = item["choices"], item["answer"]
        counts = [index.count(c) for c in choices]
        lengths = [-len(c) for c in choices]
        per_item["always_first"].append(1.0 if answer == 0 else 0.0)
        per_item["more_common"].append(_credit(counts, answer, max(counts)))
        per_item["shorter"].append(_credit(lengths, answer, max(lengths)))
    return {name: {"value": float(np.mean(v)) if v else float("nan"), "stderr": mean_stderr(v)}
            for name, v in per_item.items()}


def check_baselines(name: str, values: dict[str, dict[str, float]], n: int) -> None:
    """A built-in set that frequency or length can answer is broken: fail the build, naming it."""
    if n == 0:
        return
    tolerance = 2 * 0.5 / math.sqrt(n)  # two standard errors of a coin over n items
    for baseline in ("more_common", "shorter"):
        value = values[baseline]["value"]
        if abs(value - 0.5) > tolerance:
            raise EvalSetError(
                f"evaluation set {name!r}: the {baseline!r} baseline scores {value:.3f} over {n} items, outside "
                f"0.5 ± {tolerance:.3f} (2 standard errors): its wrong options give the right one away")


# --- sampling ----------------------------------------------------------------------------------


def sample(items: Sequence[dict[str, Any]], max_items: int | None, seed: int) -> list[dict[str, Any]]:
    """At most `max_items`, seeded and stratified by answer position so positions stay balanced."""
    if max_items is None or len(items) <= max_items:
        return list(items)
    rng = random.Random(seed)
    by_position: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_position.setdefault(item["answer"], []).append(i)
    groups = [rng.sample(ix, len(ix)) for _, ix in sorted(by_position.items())]
    chosen: list[int] = []
    while len(chosen) < max_items:  # round-robin over positions
        for group in groups:
            if group and len(chosen) < max_items:
                chosen.append(group.pop())
    return [items[i] for i in sorted(chosen)]


# --- files: built-in sets on disk and user-supplied ones ---------------------------------------


def write_set(items: Sequence[dict[str, Any]], path: Path) -> None:
    path.write_text("".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items),
                    encoding="utf-8")


def read_set(path: Path, allow_empty: bool = False) -> list[dict[str, Any]]:
    """A set file: a JSON list, or JSON Lines; every item validated, errors naming file and item.

    A user's empty set is a mistake; a built-in one is empty when the lore has nothing to ask
    (no images: no `pictures`), and `allow_empty` says so.
    """
    path = Path(path)
    raw = read_items(path)
    if not raw and not allow_empty:
        raise EvalSetError(f"{path}: the evaluation set has no items")
    return [_validate(path, i, item) for i, item in enumerate(raw, start=1)]


def read_items(path: Path, what: str = "evaluation set") -> list[Any]:
    """A set file's items, unvalidated: a JSON list, or JSON Lines. A missing or unreadable file
    or invalid JSON is one error naming the file (and the line). A byte-order mark, which some
    editors put at the start of a UTF-8 file, is not part of the text."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise EvalSetError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalSetError(f"{path}: cannot read the {what} ({exc})") from None
    return parse_items(Path(path), text)


def parse_items(path: Path, text: str) -> list[Any]:
    """JSON Lines are split at line ends ("\n", "\r\n", "\r") only: `str.splitlines` would also
    split at U+2028, U+0085 and the like, which `json.dumps(..., ensure_ascii=False)` (`write_set`)
    leaves raw inside strings, where a raw "\n" or "\r" cannot be.
    Besides syntax, `json` refuses an integer of over 4300 digits (ValueError) and nesting deeper
    than the recursion limit (RecursionError): invalid JSON here too."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EvalSetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except (ValueError, RecursionError) as exc:
            raise EvalSetError(f"{path}: not valid JSON ({_json_refusal(exc)})") from None
        return data
    items = []
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise EvalSetError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
            except (ValueError, RecursionError) as exc:
                raise EvalSetError(f"{path}: line {number} is not valid JSON ({_json_refusal(exc)})") from None
    return items


def _json_refusal(exc: Exception) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]


def _validate(path: Path, number: int, item: Any) -> dict[str, Any]:
    where = f"{path}: item {number}"
    if not isinstance(item, dict):
        raise EvalSetError(f"{where}: expected an object with question, choices and answer, got {type(item).__name__}")
    missing = [k for k in ("question", "choices", "answer") if k not in item]
    if missing:
        raise EvalSetError(f"{where}: missing {', '.join(missing)}")
    question, choices, answer = item["question"], item["choices"], item["answer"]
    if not isinstance(question, str) or not question.strip():
        raise EvalSetError(f"{where}: 'question' must be a non-empty string")
    if (not isinstance(choices, list) or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)):
        raise EvalSetError(f"{where}: 'choices' must be a list of two or more non-empty strings")
    if len(set(choices)) != len(choices):
        raise EvalSetError(f"{where}: 'choices' has the same choice twice")
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise EvalSetError(f"{where}: 'answer' must be a choice's index or its text, got {answer!r}")
    if isinstance(answer, str):
        if answer not in choices:
            raise EvalSetError(f"{where}: 'answer' {answer!r} is not one of its choices")
        answer = choices.index(answer)
    elif not 0 <= answer < len(choices):
        raise EvalSetError(f"{where}: 'answer' index {answer} is out of range for {len(choices)} choices")
    return {**item, "question": question, "choices": list(choices), "answer": answer,
            "image_sha256": item.get("image_sha256", ""), "doc_id": item.get("doc_id", ""),
            "field": item.get("field", ""), "set": item.get("set", path.stem)}


@dataclass(frozen=True)
class UserSet:
    name: str
    path: str
    sha256: str

    def fingerprint_token(self) -> str:
        """What a stage's version keys on: the set's name and content, not where the file lies."""
        return f"{self.name}@{self.sha256}"


def user_sets(paths: Sequence[str | Path], relative_to: Path | None = None) -> list[UserSet]:
    """Validate every user-supplied set up front; a set's name is its file's stem.

    A relative path that does not exist as given is looked up beside the domain config.
    """
    found: dict[str, UserSet] = {}
    for path in paths:
        path = Path(path)
        if not path.is_absolute() and not path.exists() and relative_to and (relative_to / path).exists():
            path = (relative_to / path).resolve()
        read_set(path)
        name = path.stem
        if name in BUILTIN_SETS or name in found:
            raise EvalSetError(f"{path}: a set named {name!r} already exists; rename the file")
        found[name] = UserSet(name, str(path), file_sha256(path))
    return list(found.values())


def load_user_set(user_set: UserSet) -> list[dict[str, Any]]:
    """The set's items, refusing a file that changed since its hash was taken (it was versioned)."""
    path = Path(user_set.path)
    digest = file_sha256(path) if path.exists() else None
    if digest != user_set.sha256:
        raise EvalSetError(f"{path}: the evaluation set changed while the flow ran; run it again")
    return [{**item, "set": user_set.name} for item in read_set(path)]


def eval_set_paths(dataset_dir: Path) -> dict[str, Path]:
    """The built-in sets a dataset holds, in their fixed order."""
    return {name: dataset_dir / EVAL_DIR / f"{name}.jsonl" for name in BUILTIN_SETS
            if (dataset_dir / EVAL_DIR / f"{name}.jsonl").exists()}


def load_eval_sets(dataset_dir: Path, user_sets: Sequence[UserSet], max_items: int | None,
                   seed: int) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, dict[str, float]]]]:
    """The sets one evaluation scores (built-in, then user-supplied), each sampled to `max_items`,
    with the baselines of exactly those items (frequency counted in this dataset's training text)."""
    sets = {name: read_set(path, allow_empty=True) for name, path in eval_set_paths(dataset_dir).items()}
    sets.update({s.name: load_user_set(s) for s in user_sets})
    sets = {name: sample(items, max_items, seed) for name, items in sets.items() if items}
    index = TextIndex(corpus_texts(dataset_dir))
    return sets, {name: baselines(items, index) for name, items in sets.items()}
