"""Reading a checkpoint's score back from an evaluation artifact's table, for export and the chat UI.

One reader, so the export's record and the chat dropdown label a model with the same number.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

TABLE_FILE = "evaluation.csv"


def score_label(score: dict[str, Any] | None) -> str:
    if not score:
        return "not evaluated"
    return f"{score['set']} {score['metric']} {score['value']:.3f} ± {score['stderr']:.3f}"


def table_score(evaluation_dir: Path, decision: dict[str, Any], checkpoint: str | None = None) -> dict[str, Any] | None:
    """A checkpoint's score (step 0's when `checkpoint` is None) on the set and metric the
    evaluation's gate decided on, from the evaluation's table."""
    wanted, metric = decision.get("set", "facts"), decision.get("metric", "acc")
    try:
        with open(evaluation_dir / TABLE_FILE, newline="") as handle:
            row = next((r for r in csv.DictReader(handle) if r["set"] == wanted
                        and (r["step"] == "0" if checkpoint is None else r["checkpoint"] == checkpoint)), None)
    except OSError:
        return None
    if row is None:
        return None
    return {"set": wanted, "metric": metric, "value": float(row[metric]), "stderr": float(row[f"{metric}_stderr"]),
            "n": int(row["n"])}
