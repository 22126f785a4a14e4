"""One picture per generation metric: checkpoint (rows) by decoding point (columns), one panel per set.

A table of 3 checkpoints x 3 points x 7 metrics x 2 sets is hard to read; a heatmap shows at a
glance whether training helped (rows) and which decoding serves it best (columns). Each cell is the
aggregate over seeds, written with its standard error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence


def heatmap(table: Sequence[dict[str, Any]], metric: str, path: Path, title: str) -> bool:
    """Write the heatmap of `metric`; False (and no file) when no set has it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in table if r["metric"] == metric and _aggregate(r)]
    names = list(dict.fromkeys(r["set"] for r in rows))
    if not names:
        return False
    steps = sorted({(r["step"], r["checkpoint"]) for r in rows})
    points = list(dict.fromkeys(r["decoding"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(1.2 + 1.5 * len(points) * len(names), 0.9 + 0.5 * len(steps)),
                             dpi=100, squeeze=False)
    for ax, name in zip(axes[0], names):
        cells = {(r["step"], r["decoding"]): r for r in rows if r["set"] == name}
        grid = np.array([[cells[(s, p)]["value"] if (s, p) in cells else np.nan for p in points] for s, _ in steps])
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        for i, (step, _) in enumerate(steps):
            for j, point in enumerate(points):
                if (step, point) in cells:
                    cell = cells[(step, point)]
                    err = f"\n± {cell['stderr']:.2f}" if _finite(cell["stderr"]) else ""
                    bright = image.norm(cell["value"]) > 0.6  # viridis runs dark to yellow
                    ax.text(j, i, f"{cell['value']:.2f}{err}", ha="center", va="center", fontsize=7,
                            color="black" if bright else "white")
        ax.set_xticks(range(len(points)), points, fontsize=7, rotation=20)
        ax.set_yticks(range(len(steps)), [label for _, label in steps], fontsize=7)
        ax.set_title(name, fontsize=8)
    fig.suptitle(f"{title}: {metric}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _aggregate(row: dict[str, Any]) -> bool:
    seed = row["seed"]
    return seed is None or (isinstance(seed, float) and math.isnan(seed))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
