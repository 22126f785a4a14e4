"""A grid of config overrides, and one comparison across the finetune runs it made.

The grid is a mapping of dotted config keys to the values to try; its points are their cross
product, each one finetune run with those overrides (`flows/sweep.py`). What each run scored is
read from its own evaluation table: for every set, the promoted checkpoint (else the last one)
beside step 0 and the set's best no-knowledge baseline, with standard errors and the paired 95%
interval of the change, so a difference inside the noise reads as one; and for every open set,
what that checkpoint says at the gate's decoding point against what step 0 says.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

DEFAULT_GRID: dict[str, list[Any]] = {"dataset.fraction": [0.25, 0.5, 1.0]}


def points(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    if not grid or any(not values for values in grid.values()):
        raise ValueError(f"sweep grid {grid!r}: every key needs at least one value")
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def label(point: dict[str, Any]) -> str:
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in point.items())


def comparison_rows(point: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per evaluation set of one run: the chosen checkpoint against step 0 and the baselines."""
    table, promotion = result["evaluation"], result["promotion"]
    chosen = promotion.get("promoted") or max(table, key=lambda r: r["step"])["checkpoint"]
    rows = []
    for name in dict.fromkeys(r["set"] for r in table):
        base = next(r for r in table if r["set"] == name and r["step"] == 0)
        row = next(r for r in table if r["set"] == name and r["checkpoint"] == chosen)
        baselines = result["baselines"].get(name, {})
        best = max(baselines.values(), key=lambda b: b["value"]) if baselines else {"value": None}
        rows.append({"point": label(point), **{k.rsplit(".", 1)[-1]: v for k, v in point.items()}, "set": name,
                     "checkpoint": chosen, "promoted": bool(promotion.get("promoted")),
                     "acc": row["acc"], "acc_stderr": row["acc_stderr"], "step0_acc": base["acc"],
                     "delta_acc": row.get("delta_acc"), "delta_ci_low": row.get("delta_acc_ci_low"),
                     "delta_ci_high": row.get("delta_acc_ci_high"), "best_baseline": best["value"]})
    return rows


OPEN_METRICS = ("answer_match", "rougeL", "bertscore_f1", "answer_tokens")


def open_comparison_rows(point: dict[str, Any], result: dict[str, Any], decoding: str = "greedy",
                         metrics: Sequence[str] = OPEN_METRICS) -> list[dict[str, Any]]:
    """What the run's chosen checkpoint says against step 0: per open set and metric at one decoding
    point, the value ± SE, step 0's, and the paired change with its 95% interval (the probes, the
    before/after's questions, are left out)."""
    table, promotion = result.get("generation") or [], result["promotion"]
    if not table:
        return []
    chosen = promotion.get("promoted") or max(table, key=lambda r: r["step"])["checkpoint"]

    def aggregate(step_or_name: Any, name: str, metric: str) -> dict[str, Any] | None:
        return next((r for r in table if r["set"] == name and r["decoding"] == decoding and r["metric"] == metric
                     and r["seed"] is None and step_or_name in (r["step"], r["checkpoint"])), None)

    rows = []
    for name in dict.fromkeys(r["set"] for r in table if r["set"] != "probes"):
        for metric in metrics:
            row, base = aggregate(chosen, name, metric), aggregate(0, name, metric)
            if row is None or base is None:
                continue
            rows.append({"point": label(point), **{k.rsplit(".", 1)[-1]: v for k, v in point.items()}, "set": name,
                         "decoding": decoding, "metric": metric, "checkpoint": chosen, "value": row["value"],
                         "stderr": row["stderr"], "step0": base["value"], "delta": row["delta"],
                         "delta_ci_low": row["delta_ci_low"], "delta_ci_high": row["delta_ci_high"]})
    return rows


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy ± SE per grid point, one line per set, step 0 dashed beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["point"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(labels)), 3.6), dpi=100)
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = {r["point"]: r for r in rows if r["set"] == name}
        xs = [i for i, p in enumerate(labels) if p in mine]
        line = ax.errorbar(xs, [mine[labels[i]]["acc"] for i in xs], yerr=[mine[labels[i]]["acc_stderr"] for i in xs],
                           marker="o", capsize=3, label=name)
        ax.plot(xs, [mine[labels[i]]["step0_acc"] for i in xs], "--", color=line[0].get_color(), alpha=0.5)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
    ax.set(ylabel="accuracy (± SE); dashed: step 0", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
