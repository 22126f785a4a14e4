"""Documents to chat examples, plus the evaluation sets built beside them.

The model must learn the lore, so every fact an evaluation question asks about is taught in
training: in the page's prose and as short question/answer turns. What training never sees is the
evaluation question itself: eval questions use their own phrasing, and any that still matches a
training prompt exactly or nearly (word-set Jaccard) is dropped and counted on every build.

`control="permuted_facts"` is the experiment that shows the evaluation measures page-specific
knowledge: training teaches every infobox value on a different page of the same field (and no prose,
which would teach the true pairing), while the evaluation sets are built from the true pages. A
model trained that way knows the same values, as often and as long, but not whose they are, and
must score no better than chance on `facts`.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from datasets import Dataset, DatasetDict

from loretune.dataset import builders, card, dedup, evalsets, fact_renderings, mix, opensets
from loretune.dataset.builders import TRAIN_IMAGE_TEMPLATES, chunk_prose  # noqa: F401  (for tests and callers)
from loretune.dataset.fact_renderings import TRAIN_QUESTION_TEMPLATES, Teaching  # noqa: F401
from loretune.dataset.layout import BUILD_REPORT, EVAL_DIR, SFT_DIR

SKIP_FIELDS = {"name", "image", "caption", "title"}


@dataclass
class LorePage:
    """What the dataset needs from a document: plain values, no ingest types."""

    doc_id: str
    title: str
    text: str
    facts: dict[str, list[str]]  # infobox field -> its values, in the wiki's order
    image: str | None  # sha256 of the page's main image, if it was fetched and valid
    kind: str | None = None  # the infobox type, e.g. "character"; None outside Fandom
    provenance: dict[str, str] = field(default_factory=dict)  # PROVENANCE keys: where the page came from
    images: list[str] = field(default_factory=list)  # every fetched image, in the document's order
    meta: dict[str, Any] = field(default_factory=dict)  # the source's structure: comments, chapters, sections


# Where every training example and evaluation item came from, as flat string columns.
PROVENANCE = ("source", "url", "revision", "license", "attribution")


@dataclass
class BuildReport:
    train: int = 0
    validation: int = 0
    eval_questions: int = 0
    eval_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    open_sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> items, dropped as not taught
    control: str = "none"
    dropped_exact: int = 0
    dropped_near_duplicate: int = 0
    dropped_examples: list[str] = field(default_factory=list)
    mixed: dict[str, int] = field(default_factory=dict)  # mixed-in source -> training examples taken
    examples: dict[str, int] = field(default_factory=dict)  # "<source> / <builder>" -> training examples
    empty_answers: int = 0  # examples dropped because their answer was empty
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # "<source> / <builder>" -> reason -> docs
    # training examples dropped as near-duplicates of another document's, per "dropped ~ kept" source
    near_duplicate_examples: dict[str, int] = field(default_factory=dict)
    near_duplicate_samples: list[str] = field(default_factory=list)
    # per kind of fact (whole field, list entry, prose relation): facts, and answers stating each in the train split
    exposures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def pages_from_documents(documents: Iterable[Any], image_sha_by_url: dict[str, str]) -> list[LorePage]:
    pages = []
    for doc in documents:
        meta = doc.meta if isinstance(doc.meta, dict) else json.loads(doc.meta or "{}")
        facts = {}
        for key, value in (meta.get("infobox") or {}).items():
            values = [str(v) for v in (value if isinstance(value, list) else [value]) if str(v).strip()]
            if key not in SKIP_FIELDS and values:
                facts[key] = values
        images = list(dict.fromkeys(image_sha_by_url[u] for u in doc.image_urls if u in image_sha_by_url))
        provenance = {"source": doc.source, "url": doc.url, "revision": revision(doc.source, doc.id, meta),
                      "license": doc.license, "attribution": doc.attribution}
        pages.append(LorePage(doc_id=f"{doc.source}:{doc.id}", title=doc.title, text=doc.text, facts=facts,
                              image=images[0] if images else None, kind=meta.get("infobox_type"),
                              provenance=provenance, images=images, meta=meta))
    return sorted(pages, key=lambda p: p.doc_id)


def revision(source: str, doc_id: str, meta: dict[str, Any]) -> str:
    """Which version of the document an example was made from, in the source's own terms."""
    if meta.get("revid") is not None:  # Fandom: the page revision
        return f"revid {meta['revid']}"
    for key, label in (("created_utc", "created"), ("upload_date", "uploaded"), ("published", "published")):
        if meta.get(key):
            value = meta[key]
            if key == "created_utc":
                from datetime import datetime, timezone

                value = datetime.fromtimestamp(float(value), timezone.utc).isoformat(timespec="seconds")
            return f"{doc_id}, {label} {value}"
    return doc_id


def training_examples(pages: Sequence[LorePage], system: str, max_answer_chars: int,
                      skipped: Counter | None = None, teaching: Teaching = Teaching(),
                      seed: int = 0) -> list[dict[str, Any]]:
    """Every page through its source's builders (`dataset/builders.py`) and the fact and prose
    renderings (`dataset/fact_renderings.py`), as chat rows with the page's provenance; `skipped`
    counts, per (source / builder, reason), documents a builder passed over."""
    rows = []
    lore = fact_renderings.lore_builders(pages, teaching, seed)
    for page in pages:
        source = builders.source_of(page)
        known = source in builders.SOURCE_BUILDERS
        for builder in builders.builders_for(page) + lore.get(source if known else "fandom", ()):
            for made in builder(page, max_answer_chars):
                if isinstance(made, builders.Skipped):
                    if skipped is not None:
                        skipped[(f"{source} / {builder.__name__}", made.reason)] += 1
                    continue
                rows.append(_row(made, builder.__name__, page, system))
    return rows


def _row(draft: builders.Draft, builder: str, page: LorePage, system: str) -> dict[str, Any]:
    roles = ("user", "assistant")
    messages = [{"role": "system", "content": system},
                *({"role": roles[i % 2], "content": turn} for i, turn in enumerate(draft.turns))]
    return {"messages": messages, "image_sha256": draft.image, "kind": draft.kind, "doc_id": page.doc_id,
            "builder": builder, "facts": list(draft.facts), **{k: page.provenance.get(k, "") for k in PROVENANCE}}


def permute_facts(pages: Sequence[LorePage], seed: int, tries: int = 500) -> list[LorePage]:
    """Every page's values for a field swapped with another page's, so that (where the values
    allow it) no page keeps a value it really has; the prose is removed, since it tells the truth.

    A field where most pages share one value (every character's village) cannot be fully moved
    off the truth: the permutation with the fewest pages keeping a true value is used.
    """
    rng = random.Random(seed)
    moved: dict[str, dict[str, list[str]]] = {p.doc_id: {} for p in pages}
    for key in sorted({key for p in pages for key in p.facts}):
        holders = [p for p in pages if key in p.facts]
        best, best_kept = list(range(len(holders))), len(holders) + 1
        for _ in range(tries if len(holders) > 1 else 0):
            order = rng.sample(range(len(holders)), len(holders))
            kept = sum(bool(set(holders[j].facts[key]) & set(p.facts[key])) for p, j in zip(holders, order))
            if kept < best_kept:
                best, best_kept = order, kept
            if kept == 0:
                break
        for page, j in zip(holders, best):
            moved[page.doc_id][key] = holders[j].facts[key]
    # No prose and none of the source's structure (comments, transcripts, sections): all tell the truth.
    return [replace(p, text="", facts=moved[p.doc_id], meta={}) for p in pages]


def build_eval_sets(pages: Sequence[LorePage], lore_texts: Iterable[str], offered_prompts: Iterable[str],
                    seed: int, threshold: float, report: BuildReport) -> dict[str, list[dict[str, Any]]]:
    """The three built-in sets, decontaminated, answers placed, baselines recorded and checked."""
    index = evalsets.TextIndex(lore_texts)
    builders = {"facts": evalsets.facts_set, "synthetic": evalsets.synthetic_set, "pictures": evalsets.pictures_set}
    prompts = set(offered_prompts)
    sets = {}
    for name, builder in builders.items():
        rng = random.Random(f"{seed}:{name}")
        items, skipped = builder(pages, index, rng)
        items = evalsets.place_answers(decontaminate(items, prompts, threshold, report), rng)
        values = evalsets.baselines(items, index)
        report.eval_sets[name] = {"items": len(items), "skipped_for_balance": skipped, "baselines": values}
        evalsets.check_baselines(name, values, len(items))
        sets[name] = items
    report.eval_questions = sum(len(items) for items in sets.values())
    return sets


def build_open_sets(pages: Sequence[LorePage], lore_texts: Sequence[str], offered_prompts: Iterable[str], seed: int,
                    threshold: float, report: BuildReport) -> dict[str, list[dict[str, Any]]]:
    """`facts_open` and `prose_open` (`dataset/opensets.py`): decontaminated like the binary sets,
    and kept only where training teaches the answer."""
    built = {"facts_open": opensets.facts_open_set(pages),
             "prose_open": opensets.prose_open_set(pages, random.Random(f"{seed}:prose_open"))}
    prompts, training_text = set(offered_prompts), "\n".join(lore_texts)
    sets = {}
    for name, items in built.items():
        before = report.dropped_exact + report.dropped_near_duplicate
        items, not_taught = opensets.taught(decontaminate(items, prompts, threshold, report), training_text)
        report.open_sets[name] = {"items": len(items), "not_taught": not_taught,
                                  "leaked": report.dropped_exact + report.dropped_near_duplicate - before,
                                  "pages": len({i["doc_id"] for i in items}), "fields": len({i["field"] for i in items})}
        sets[name] = items
    return sets


def decontaminate(
    questions: list[dict[str, Any]], train_prompts: Iterable[str], threshold: float, report: BuildReport
) -> list[dict[str, Any]]:
    """Drop eval questions that training saw verbatim or nearly; count and sample what was dropped.

    "Nearly" is the training examples' own near-duplicate test (`dataset/dedup.py`, MinHash LSH
    over word sets, each candidate checked exactly), so both checks agree on what alike means.
    """
    seen_exact = {" ".join(p.lower().split()) for p in train_prompts}
    index = dedup.NearDuplicateIndex(threshold)
    for i, prompt in enumerate(sorted(seen_exact)):
        index.add(str(i), dedup.words(prompt))
    kept = []
    for q in questions:
        text = " ".join(q["question"].lower().split())
        if text in seen_exact:
            report.dropped_exact += 1
            report.dropped_examples.append(q["question"])
            continue
        if index.matches(dedup.words(q["question"])):
            report.dropped_near_duplicate += 1
            report.dropped_examples.append(q["question"])
            continue
        kept.append(q)
    return kept


def mixed_examples(sources: Sequence[dict[str, Any]], system: str, lore_examples: int,
                   seed: int) -> dict[str, list[dict[str, Any]]]:
    """Rows of each mixed-in source (`dataset/mix.py`), `count` of them or `weight` x the lore's,
    with the domain's system prompt where a conversation brings none (as the chat UI will ask)."""
    taken = {}
    for i, source in enumerate(sources):
        name = mix.name(source)
        conversations = mix.load_conversations(source, source["format"], source.get("split", "train"))
        n = source["count"] if source.get("count") else round(source["weight"] * lore_examples)
        rows = []
        for j, messages in enumerate(mix.take(conversations, n, seed=seed + i)):
            if messages[0]["role"] != "system":
                messages = [{"role": "system", "content": system}, *messages]
            rows.append({"messages": messages, "image_sha256": "", "kind": "mix", "doc_id": f"mix:{name}:{j}", "facts": [],
                         "builder": f"mix.{source['format']}", "source": "mix", "url": source["path"],
                         "revision": source.get("sha256", ""), "license": "", "attribution": ""})
        taken[name] = rows
    return taken


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
    control: Literal["none", "permuted_facts"] = "none",
    mix: Sequence[dict[str, Any]] = (),
    fraction: float = 1.0,
    teaching: Teaching = Teaching(),
) -> BuildReport:
    """Write `sft/` (train/validation chat examples) and `eval/<set>.jsonl` under `out_dir`."""
    if not pages:
        raise ValueError("no documents to build a dataset from: did every source fail?")
    system = system_prompt.format(domain=domain)
    taught = permute_facts(pages, seed) if control == "permuted_facts" else pages
    skipped: Counter = Counter()
    built = training_examples(taught, system, max_answer_chars, skipped, teaching, seed)
    lore = [r for r in built if all(m["content"] for m in r["messages"][1:])]
    empty_answers = len(built) - len(lore)
    rows = lore
    if fraction < 1.0:  # a seeded share of the lore, for data-scaling sweeps
        rows = random.Random(f"{seed}:fraction").sample(lore, max(1, round(fraction * len(lore))))
    mixed = mixed_examples(mix, system, lore_examples=len(rows), seed=seed)
    mixed_rows = [row for taken in mixed.values() for row in taken]
    rows, near_duplicates, near_duplicate_samples = dedup.drop_near_duplicate_examples(rows + mixed_rows,
                                                                                       near_duplicate_threshold)
    random.Random(seed).shuffle(rows)
    n_val = int(len(rows) * val_fraction)
    # An empty split cannot be saved and loaded back by `datasets`: no validation split then.
    splits = DatasetDict({"train": Dataset.from_list(rows[n_val:]),
                          **({"validation": Dataset.from_list(rows[:n_val])} if n_val else {})})

    report = BuildReport(train=len(rows) - n_val, validation=n_val, control=control,
                         mixed={name: len(taken) for name, taken in mixed.items()},
                         examples=dict(sorted(Counter(f"{r['source']} / {r['builder']}" for r in rows).items())),
                         empty_answers=empty_answers, skipped=_nested(skipped), near_duplicate_examples=dict(sorted(near_duplicates.items())),
                         near_duplicate_samples=near_duplicate_samples,
                         exposures=exposure_report(rows[n_val:], taught, teaching))
    # The evaluation sets are built against the whole lore as taught (every rendering of every
    # fact), never against the share of it a sweep point trains on nor what the near-duplicate
    # pass kept: the distractors are balanced on frequencies in that text, which is what a model
    # with no knowledge could exploit (the evaluation's "more common" baseline counts the same
    # text). So every point of a data-scaling sweep, every threshold and every training budget
    # answers the same questions with the same options, and their scores compare item by item. A
    # question any offered example asks, in any turn (lore or mixed), is dropped as leaked.
    lore_texts = [m["content"] for r in lore for m in r["messages"]]
    offered_prompts = {m["content"] for r in lore + mixed_rows for m in r["messages"] if m["role"] == "user"}
    sets = build_eval_sets(pages, lore_texts, offered_prompts, seed, near_duplicate_threshold, report)
    sets.update(build_open_sets(pages, lore_texts, offered_prompts, seed, near_duplicate_threshold, report))
    by_doc = {page.doc_id: page.provenance for page in pages}
    sets = {name: [{**item, **{k: by_doc.get(item.get("doc_id"), {}).get(k, "") for k in PROVENANCE}} for item in items]
            for name, items in sets.items()}
    if not sets["facts"] and not sets["synthetic"]:
        raise ValueError("no evaluation questions could be built: pages need infobox facts shared across pages")

    splits.save_to_disk(str(out_dir / SFT_DIR))
    (out_dir / EVAL_DIR).mkdir()
    for name, items in sets.items():
        evalsets.write_set(items, out_dir / EVAL_DIR / f"{name}.jsonl")
    report.dropped_examples = report.dropped_examples[:20]
    (out_dir / BUILD_REPORT).write_text(json.dumps({**report.as_dict(), "system_prompt": system}, indent=2))
    (out_dir / "README.md").write_text(card.dataset_card(domain, pages, report, mix, sets))
    return report


def exposure_report(train_rows: Sequence[dict[str, Any]], pages: Sequence[LorePage],
                    teaching: Teaching) -> dict[str, dict[str, Any]]:
    """How often the training split states each fact, per kind: the facts the lore has (a fact
    the split never states counts as 0), and the fewest, mean and most statements of one."""
    counts = fact_renderings.exposure_counts(key for row in train_rows for key in row.get("facts", []))
    facts = {f.key: ("entry" if f.entry else "field") for page in pages for f in fact_renderings.page_facts(page)}
    kinds: dict[str, list[int]] = {"field": [], "entry": [], "lead": [], "relation": []}
    for key, kind in facts.items():
        kinds[kind].append(counts.get(key, 0))
    leads = {fact_renderings.lead_key(page, lead) for page in pages
             if (lead := fact_renderings.lead_sentence(page)) is not None}
    kinds["lead"] = [n for key, n in counts.items() if key in leads]
    kinds["relation"] = [n for key, n in counts.items() if key not in facts and key not in leads]
    report = {kind: {"facts": len(n), "min": min(n), "mean": round(sum(n) / len(n), 2), "max": max(n)}
              for kind, n in kinds.items() if n}
    return {**report, "per_epoch_target": {"facts": teaching.exposures + teaching.paragraphs,
                                           "leads": teaching.lead_exposures,
                                           "relations": teaching.relation_exposures}}


def _nested(counts: Counter) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (builder, reason), n in sorted(counts.items()):
        nested.setdefault(builder, {})[reason] = n
    return nested
