"""Base models side by side: one finetune run per base, one table (`flows/compare.py`).

The table is the sweep's (`evaluation/sweep.py`), with the base as the grid point: per base and
evaluation set, step 0 and the promoted (else the last) checkpoint ± SE, the paired change with
its 95% interval and the best no-knowledge baseline; per open set, what the checkpoint says at the
gate's decoding point against step 0. Each row also carries what the base cost: trainable
parameters (LoRA and the image projector, counted from the adapter file), training tokens per
second and seconds (the trainer's own log), whether the base is instruction-tuned, and the
comparison's wall time for it (a cached base takes seconds). A base that could not be had is one
row with its error, so the others' rows still stand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from loretune.evaluation import sweep

BASE_KEY = "model.base"
REVISION_KEY = "model.revision"


def points(bases: Sequence[str], per_base: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One override set per base: `id@revision` pins a hub revision; `per_base[base]` adds the
    base's own overrides (a learning rate, a step budget, a batch)."""
    per_base = per_base or {}
    if not bases:
        raise ValueError("compare: no bases to compare")
    duplicates = sorted({b for b in bases if list(bases).count(b) > 1})
    if duplicates:
        raise ValueError(f"compare: {', '.join(duplicates)} listed twice")
    unknown = sorted(set(per_base) - set(bases))
    if unknown:
        raise ValueError(f"compare.per_base names {', '.join(unknown)}, which is not among the bases {list(bases)}")
    out = []
    for base in bases:
        name, _, revision = base.partition("@")
        point: dict[str, Any] = {BASE_KEY: name}
        if revision:
            point[REVISION_KEY] = revision
        out.append({**point, **per_base.get(base, {})})
    return out


def label(point: dict[str, Any]) -> str:
    """The base, and its own overrides if any: the row's name in the table and the plot."""
    rest = {k: v for k, v in point.items() if k not in (BASE_KEY, REVISION_KEY)}
    name = point[BASE_KEY] + (f"@{point[REVISION_KEY]}" if REVISION_KEY in point else "")
    return name + (f" ({sweep.label(rest)})" if rest else "")


def training_cost(checkpoints_dir: Path, model_dir: Path) -> dict[str, Any]:
    """What training this base cost, as the stages recorded it: the training run's record
    (`training/sft.py`: trainable parameters, trainer seconds and tokens per second, the latter
    only for a run that went from step 0 uninterrupted) and the model's provenance (instruction-
    tuned or not; no provenance: the tiny model, random weights)."""
    run = json.loads((checkpoints_dir / "training_run.json").read_text())
    steps = max(int(p.name.split("-")[-1]) for p in checkpoints_dir.glob("checkpoint-*") if p.is_dir())
    provenance_file = model_dir / "loretune_model.json"
    provenance = json.loads(provenance_file.read_text()) if provenance_file.exists() else {}
    return {"instruct": provenance.get("instruct") if provenance else False,
            "parameters": run.get("parameters"), "trainable": run.get("trainable_parameters"), "train_steps": steps,
            "train_s": run.get("train_runtime_s"), "tokens_per_s": run.get("tokens_per_s")}


def rows_for(point: dict[str, Any], result: dict[str, Any], cost: dict[str, Any], wall_s: float,
             decoding: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The base's binary and open rows: the sweep's comparison, named by the base, with its cost."""
    name = label(point)
    extra = {"base": name, **cost, "wall_s": round(wall_s, 1), "error": None}
    binary = [{**_renamed(row, name), **extra} for row in sweep.comparison_rows({BASE_KEY: point[BASE_KEY]}, result)]
    spoken = [{**_renamed(row, name), **extra}
              for row in sweep.open_comparison_rows({BASE_KEY: point[BASE_KEY]}, result, decoding)]
    return binary, spoken


def error_row(point: dict[str, Any], message: str, wall_s: float) -> dict[str, Any]:
    """A base that could not be had or failed: its row says why; nothing else is made up."""
    return {"point": label(point), "base": label(point), "set": None, "error": message.strip().splitlines()[0][:500]
            if message.strip() else "failed", "wall_s": round(wall_s, 1)}


def _renamed(row: dict[str, Any], name: str) -> dict[str, Any]:
    row = {k: v for k, v in row.items() if k not in ("base",)}
    row["point"] = name
    return row
