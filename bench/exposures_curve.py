"""What a model knows against how often training stated each fact: the exposures curve.

    python bench/exposures_curve.py --store STORE [--evaluation VERSION] [--out exposures_curve.png]

Reads one evaluation artifact (default: the newest in the store) and the checkpoints artifact it
scored, whose budget says how many exposures per fact its last step reached. Every checkpoint is
a point: exposures = step / last step x that number (the schedule is the run's own: a point on
the way, not a run that stopped there). Plots, with one standard error, `facts` accuracy (binary
choice), `facts_open` answer match and `prose_open` ROUGE-L at the gate's decoding point, each
beside step 0; and prints the same as a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path


def newest(folder: Path) -> Path:
    return max(folder.iterdir(), key=lambda p: json.loads((p / "manifest.json").read_text())["created_at"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--evaluation", help="an evaluation version (default: the newest)")
    parser.add_argument("--decoding", default="greedy")
    parser.add_argument("--out", type=Path, default=Path("exposures_curve.png"))
    args = parser.parse_args()
    evaluation = args.store / "evaluation" / args.evaluation if args.evaluation else newest(args.store / "evaluation")
    inputs = json.loads((evaluation / "manifest.json").read_text())["inputs"]
    checkpoints = args.store / "checkpoints" / inputs["checkpoints"].split("@")[1]
    manifest = json.loads((checkpoints / "manifest.json").read_text())
    budget = manifest["details"].get("budget", "")
    found = re.search(r"([0-9.]+) exposures per fact", budget)
    if not found:
        raise SystemExit(f"{checkpoints}: its budget ({budget or 'not recorded'}) names no exposures per fact")
    per_step = float(found.group(1)) / manifest["counts"]["steps"]

    binary = [r for r in csv.DictReader(open(evaluation / "evaluation.csv")) if r["set"] == "facts"]
    spoken = [r for r in csv.DictReader(open(evaluation / "generation.csv"))
              if r["decoding"] == args.decoding and r["seed"] in ("", "0")]
    series = {
        "facts acc (binary choice)": [(int(r["step"]), float(r["acc"]), float(r["acc_stderr"])) for r in binary],
        "facts_open answer match": _metric(spoken, "facts_open", "answer_match"),
        "prose_open ROUGE-L": _metric(spoken, "prose_open", "rougeL"),
    }
    print(f"{evaluation.name}: {budget}; decoding {args.decoding}")
    print("exposures  " + "  ".join(f"{name:>28s}" for name in series))
    for i, (step, _, _) in enumerate(series["facts acc (binary choice)"]):
        cells = [f"{points[i][1]:.3f} ± {points[i][2]:.3f}" if i < len(points) else "-" for points in series.values()]
        print(f"{step * per_step:9.1f}  " + "  ".join(f"{c:>28s}" for c in cells))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    for name, points in series.items():
        ax.errorbar([s * per_step for s, _, _ in points], [v for _, v, _ in points], yerr=[e for _, _, e in points],
                    fmt="o-", capsize=3, label=name)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":", label="chance (binary choice)")
    ax.set(xlabel="exposures per fact (statements of it seen in training)", ylabel="score ± 1 SE", ylim=(0, 1),
           title=f"SmolLM2-135M-Instruct + LoRA: what it knows vs exposures ({args.decoding})")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


def _metric(rows: list[dict[str, str]], name: str, metric: str) -> list[tuple[int, float, float]]:
    chosen = [r for r in rows if r["set"] == name and r["metric"] == metric]
    by_step = {}
    for row in chosen:  # the aggregate row (seed "") wins over a seed's where both exist
        if int(row["step"]) not in by_step or row["seed"] == "":
            by_step[int(row["step"])] = (int(row["step"]), float(row["value"]), float(row["stderr"] or 0))
    return [by_step[s] for s in sorted(by_step)]


if __name__ == "__main__":
    main()
