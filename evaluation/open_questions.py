"""What each checkpoint *says*: open questions answered over a decoding grid, scored against references.

A cell is one (checkpoint, set, decoding point, seed): every question of the set is asked in the
model's chat format with the dataset's system prompt, answered by `model/generate.py`'s batched
`generate_batch` (left-padded, the same tokens as one prompt at a time) and cut at the same stop
tokens the chat UI uses, then scored by `evaluation/generation_metrics.py`. Step 0 is the base with
adapters off, so every checkpoint is compared with its own start on the same items.

Generating is the slow part, so finished cells are kept in an answer cache keyed on what decides
the answers (the model, the set's items, the decoding settings and seed, the system prompt, the
batch size, the code): changing the grid, or adding a point, generates only the new cells.
Metrics are recomputed from the cached answers every time (seconds).

Deterministic points (greedy, beam search) run once, as seed 0; a sampled point runs once per seed,
and the table gives each seed's row and the aggregate (mean over seeds, with the seeds' standard
deviation), as the seed project reported ROUGE mean ± std over three runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from loretune.dataset import opensets
from loretune.evaluation import generation_metrics as gm
from loretune.model.answer_cache import AnswerCache  # noqa: F401  (the evaluation's cache)
from loretune.model.checkpoints import Checkpoint, at_step, load_adapters
from loretune.model.generate import Decoding, answer_questions
from loretune.model.loading import autocast
from loretune.stats import mean_stderr, paired_difference

PROBES = "probes"  # the before / after questions, a tiny open set answered at the gate's decoding point
TABLE_FILE = "generation.csv"
ANSWERS_FILE = "answers.jsonl"
CELLS_FILE = "cells.csv"
TABLE_COLUMNS = ["step", "checkpoint", "set", "decoding", "seed", "metric", "value", "stderr", "n", "seeds",
                 "seed_std", "delta", "delta_ci_low", "delta_ci_high"]
LENGTH_METRICS = ("answer_tokens", "stopped")  # mean new tokens; share that ended at end-of-turn
PAIRED_METRICS = (*gm.PER_ITEM_METRICS, *LENGTH_METRICS)


@dataclass(frozen=True)
class Point:
    """A named decoding point of the grid."""

    name: str
    decoding: Decoding

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Point:
        values = dict(values)
        name = values.pop("name")
        try:
            return cls(name, Decoding(**values))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"decoding point {name!r}: {exc}") from None

    def seeds(self, n: int) -> list[int]:
        """Sampling runs once per seed; greedy and beam search give the same answers every time."""
        return list(range(n)) if self.decoding.do_sample else [0]


def set_digest(items: Sequence[dict[str, Any]]) -> str:
    """A set's version: what is asked and what counts as right, nothing about where it came from."""
    payload = [[i["question"], i.get("reference", ""), list(i.get("answers", []))] for i in items]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]


def sets_to_ask(dataset_dir: Path, user_sets: Sequence[Any], max_items: int | None, seed: int,
                probe_questions: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The built-in open sets and the user's (`opensets.UserSet`), each sampled to `max_items`, and
    the probes: `probe_questions` (no reference: answered, not scored), else facts_open's first three."""
    built = opensets.load_open_sets(dataset_dir)
    sets = {name: opensets.sample_open(items, max_items, seed) for name, items in built.items()}
    sets.update({s.name: opensets.sample_open(opensets.load_user_open_set(s), max_items, seed) for s in user_sets})
    asked = [{"question": q, "reference": "", "answers": []} for q in probe_questions]
    probes = asked or sets.get("facts_open", [])[:3]
    return {**sets, PROBES: probes}


# --- one cell ----------------------------------------------------------------------------------


def generate_cell(model: Any, tokenizer: Any, fmt: Any, items: Sequence[dict[str, Any]], system: str,
                  decoding: Decoding, batch_size: int) -> list[dict[str, Any]]:
    """Per item: the answer's text, its length in new tokens, and whether it ended at a stop token."""
    return answer_questions(model, tokenizer, fmt, [item["question"] for item in items], system, decoding, batch_size)


def score_cell(items: Sequence[dict[str, Any]], generated: Sequence[dict[str, Any]],
               with_bertscore: bool = True) -> list[dict[str, Any]]:
    """Each item's per-item metrics (none where the item has no reference, e.g. a user's probe)."""
    scored = [i for i, item in enumerate(items) if item.get("reference")]
    per_item = gm.per_item_scores([generated[i]["answer"] for i in scored], [items[i]["reference"] for i in scored],
                                  [items[i].get("answers", []) for i in scored], with_bertscore=with_bertscore)
    metrics: list[dict[str, Any]] = [{} for _ in items]
    for name, values in per_item.items():
        for i, value in zip(scored, values):
            metrics[i][name] = value
    return metrics


# --- the grid ----------------------------------------------------------------------------------


@dataclass
class OpenEvaluation:
    answers: list[dict[str, Any]] = field(default_factory=list)  # one row per (cell, item)
    cells: list[dict[str, Any]] = field(default_factory=list)  # one row per cell: seconds, tokens, cached

    def table(self) -> list[dict[str, Any]]:
        return table_rows(self.answers)


def evaluate_open(
    *,
    base_model: str,
    checkpoints: Sequence[Checkpoint],
    sets: dict[str, Sequence[dict[str, Any]]],
    grid: dict[str, Sequence[Point]],
    seeds: int,
    system: str,
    batch_size: int,
    cache: AnswerCache,
    model_keys: dict[int, str],
    attn_implementation: str = "sdpa",
    with_bertscore: bool = True,
    precision: str = "fp32",
    log: Callable[[str], None] = print,
) -> OpenEvaluation:
    """Every (step, set, point, seed) cell, step 0 included. `grid` names each set's points;
    `model_keys` identifies each step's weights for the cache (the artifact versions)."""
    result = OpenEvaluation()
    sets = {name: items for name, items in sets.items() if items}
    if not sets:
        return result
    cells = [(name, point, seed) for name, items in sets.items() for point in grid[name] for seed in point.seeds(seeds)]
    loaded = model = None
    for step, checkpoint in [(0, None), *[(c.step, c) for c in checkpoints]]:
        label = checkpoint.path.name if checkpoint else "base"
        for name, point, seed in cells:
            items, decoding = sets[name], dataclasses.replace(point.decoding, seed=seed)
            key = cache.key(model=model_keys[step], set=set_digest(items), decoding=dataclasses.asdict(decoding),
                            system=system, batch_size=batch_size, code=CODE_VERSION)
            started = time.perf_counter()
            generated = cache.get(key)
            cached = generated is not None and len(generated) == len(items)
            if not cached:
                if model is None:
                    loaded, model = load_adapters(base_model, checkpoints, attn_implementation)
                with at_step(model, checkpoint), autocast(loaded.device, precision):
                    generated = generate_cell(model, loaded.tokenizer, loaded.fmt, items, system, decoding, batch_size)
                cache.put(key, generated)
            seconds = time.perf_counter() - started
            metrics = score_cell(items, generated, with_bertscore)
            result.cells.append({"step": step, "checkpoint": label, "set": name, "decoding": point.name, "seed": seed,
                                 "items": len(items), "new_tokens": sum(g["tokens"] for g in generated),
                                 "seconds": round(seconds, 3), "cached": cached})
            result.answers += [{"step": step, "checkpoint": label, "set": name, "decoding": point.name, "seed": seed,
                                "item": i, "question": item["question"], "reference": item.get("reference", ""),
                                **g, **m} for i, (item, g, m) in enumerate(zip(items, generated, metrics))]
        took = [c for c in result.cells if c["step"] == step]
        log(f"evaluate: step {step}: {len(took)} open-question cells, {sum(not c['cached'] for c in took)} generated "
            f"in {sum(c['seconds'] for c in took if not c['cached']):.0f} s, the rest from the answer cache")
    return result


# Part of every cell key: a change to how answers are generated must not reuse old answers.
CODE_VERSION = "open-questions/1"


# --- the long table ----------------------------------------------------------------------------


def table_rows(answers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`generation.csv`: per (step, set, decoding) a row per metric and seed, then the aggregate row
    (seed empty: the mean over seeds, the mean of their standard errors, and the seeds' standard
    deviation). Every row carries its difference from step 0 at the same set, point and seed (the
    aggregate: over seeds); per-item metrics paired over the same items, with the 95% interval,
    corpus metrics (BLEU, chrF) as a plain difference."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)  # in the answers' order: the grid's
    for answer in answers:
        groups[(answer["step"], answer["checkpoint"], answer["set"], answer["decoding"], answer["seed"])].append(answer)
    items = {key: _item_values(rows) for key, rows in groups.items()}
    rows = [_row(*key, metric, score.value, score.stderr, score.n, 1, math.nan)
            for key in groups for metric, score in _scores(groups[key], items[key], key[4]).items()]
    by_point: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_point[(row["step"], row["checkpoint"], row["set"], row["decoding"], row["metric"])].append(row)
    for (step, checkpoint, name, decoding, metric), seeded in by_point.items():
        values = [r["value"] for r in seeded]
        rows.append(_row(step, checkpoint, name, decoding, None, metric, float(np.mean(values)),
                         float(np.mean([r["stderr"] for r in seeded])), seeded[0]["n"], len(seeded),
                         float(np.std(values, ddof=1)) if len(values) > 1 else math.nan))
    base_value = {(r["set"], r["decoding"], r["seed"], r["metric"]): r["value"] for r in rows if r["step"] == 0}
    for row in rows:
        seeds = [k for k in groups if k[0] == row["step"] and k[2:4] == (row["set"], row["decoding"])
                 and (row["seed"] is None or k[4] == row["seed"])]
        if row["metric"] in PAIRED_METRICS:
            after = _mean_over_seeds([items[k][row["metric"]] for k in seeds])
            before = _mean_over_seeds([items[b][row["metric"]] if b in items else None
                                       for b in (_at_step_zero(groups, k) for k in seeds)])
            delta = _paired(after, before)
        else:
            base = base_value.get((row["set"], row["decoding"], row["seed"], row["metric"]))
            delta = (row["value"] - base, math.nan, math.nan) if base is not None else (math.nan,) * 3
        row.update(delta=delta[0], delta_ci_low=delta[1], delta_ci_high=delta[2])
    return rows


def _at_step_zero(groups: dict[tuple, Any], key: tuple) -> tuple:
    return next((k for k in groups if k[0] == 0 and k[2:] == key[2:]), (0, "base", *key[2:]))


def _item_values(rows: Sequence[dict[str, Any]]) -> dict[str, list[float] | None]:
    """Per metric, the items' values in item order (None where an item has no value)."""
    ordered = sorted(rows, key=lambda r: r["item"])
    values: dict[str, list[float] | None] = {}
    for metric in (*gm.PER_ITEM_METRICS, *LENGTH_METRICS):
        column = [_length_value(r, metric) if metric in LENGTH_METRICS else r.get(metric) for r in ordered]
        values[metric] = column if any(v is not None for v in column) else None
    return values


def _length_value(row: dict[str, Any], metric: str) -> float:
    return float(row["tokens"]) if metric == "answer_tokens" else float(bool(row["stopped"]))


def _scores(rows: Sequence[dict[str, Any]], per_item: dict[str, list[float] | None], seed: int) -> dict[str, gm.Score]:
    ordered = sorted(rows, key=lambda r: r["item"])
    scored = [r for r in ordered if r.get("reference")]
    metric_values = {m: [v for v, r in zip(vals, ordered) if r.get("reference")]
                     for m, vals in per_item.items() if vals is not None and m in gm.PER_ITEM_METRICS}
    scores = gm.aggregate(metric_values, [r["answer"] for r in scored], [r["reference"] for r in scored], seed)
    for metric in LENGTH_METRICS:
        values = per_item[metric] or []
        scores[metric] = gm.Score(metric, float(np.mean(values)), mean_stderr(values), len(values))
    return scores


def _mean_over_seeds(columns: Sequence[list[float | None] | None]) -> list[float | None] | None:
    present = [c for c in columns if c is not None]
    if not present or len(present) != len(columns):
        return None
    return [None if any(c[i] is None for c in present) else float(np.mean([c[i] for c in present]))
            for i in range(len(present[0]))]


def _paired(after: list[float | None] | None, before: list[float | None] | None) -> tuple[float, float, float]:
    if after is None or before is None or len(after) != len(before):
        return (math.nan,) * 3
    pairs = [(a, b) for a, b in zip(after, before) if a is not None and b is not None]
    if not pairs:
        return (math.nan,) * 3
    return paired_difference([a for a, _ in pairs], [b for _, b in pairs])


def _row(step: int, checkpoint: str, name: str, decoding: str, seed: int | None, metric: str, value: float,
         stderr: float, n: int, seeds: int, spread: float) -> dict[str, Any]:
    return {"step": step, "checkpoint": checkpoint, "set": name, "decoding": decoding, "seed": seed, "metric": metric,
            "value": value, "stderr": stderr, "n": n, "seeds": seeds, "seed_std": spread}
