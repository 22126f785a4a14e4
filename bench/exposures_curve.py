"""What a model knows against how often training stated each fact: the exposures curve.

    python bench/exposures_curve.py --store STORE [--evaluation VERSION ...] [--out exposures_curve.png]

Reads evaluation artifacts (default: the newest in the store) and the checkpoints artifact each
one scored, whose budget says how many exposures per fact its last step reached. Every checkpoint
is a point: exposures = step / last step x that number. Give the evaluations of an exposures sweep
(`loretune sweep --grid '{training.exposures: [3, 6, 12]}'`, one checkpoint each) and every point
is a run trained to that budget with its own schedule; give one run with several checkpoints and
the points are stops on the way through one schedule (its learning rate not yet decayed).

Plots, with one standard error, `facts` accuracy (binary choice), `facts_open` answer match and
`prose_open` ROUGE-L at the gate's decoding point, each beside step 0; prints the same as a table,
and the probe questions' answers at each point (the before / after's questions).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

SERIES = ("facts acc (binary choice)", "facts_open answer match", "prose_open ROUGE-L")


def newest(folder: Path) -> Path:
    return max(folder.iterdir(), key=lambda p: json.loads((p / "manifest.json").read_text())["created_at"])


def points(store: Path, evaluation: Path, decoding: str) -> tuple[str, list[tuple[float, dict]], dict]:
    """(the run's budget, [(exposures, {series: (value, stderr)})] per step, {step: probe answers})."""
    inputs = json.loads((evaluation / "manifest.json").read_text())["inputs"]
    checkpoints = store / "checkpoints" / inputs["checkpoints"].split("@")[1]
    manifest = json.loads((checkpoints / "manifest.json").read_text())
    budget = manifest["details"].get("budget", "")
    found = re.search(r"([0-9.]+) exposures per fact", budget)
    if not found:
        raise SystemExit(f"{checkpoints}: its budget ({budget or 'not recorded'}) names no exposures per fact")
    per_step = float(found.group(1)) / manifest["counts"]["steps"]

    binary = [r for r in csv.DictReader(open(evaluation / "evaluation.csv")) if r["set"] == "facts"]
    spoken = [r for r in csv.DictReader(open(evaluation / "generation.csv"))
              if r["decoding"] == decoding and r["seed"] in ("", "0")]
    by_step: dict[int, dict[str, tuple[float, float]]] = {}
    for r in binary:
        by_step.setdefault(int(r["step"]), {})[SERIES[0]] = (float(r["acc"]), float(r["acc_stderr"]))
    for name, (set_name, metric) in zip(SERIES[1:], (("facts_open", "answer_match"), ("prose_open", "rougeL"))):
        for step, value, stderr in _metric(spoken, set_name, metric):
            by_step.setdefault(step, {})[name] = (value, stderr)
    probes: dict[int, list[tuple[str, str]]] = {}
    answers = evaluation / "answers.jsonl"
    for line in answers.read_text().splitlines() if answers.exists() else []:
        row = json.loads(line)
        if row.get("set") == "probes" and row.get("decoding") == decoding and row.get("seed") in (None, 0):
            probes.setdefault(int(row["step"]), []).append((row["question"], row["answer"]))
    return budget, [(step * per_step, by_step[step]) for step in sorted(by_step)], probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--evaluation", nargs="+", help="evaluation versions (default: the newest)")
    parser.add_argument("--decoding", default="greedy")
    parser.add_argument("--out", type=Path, default=Path("exposures_curve.png"))
    args = parser.parse_args()
    evaluations = ([args.store / "evaluation" / v for v in args.evaluation] if args.evaluation
                   else [newest(args.store / "evaluation")])
    curve: dict[float, dict[str, tuple[float, float]]] = {}
    for i, evaluation in enumerate(evaluations):
        budget, run, probes = points(args.store, evaluation, args.decoding)
        print(f"{evaluation.name}: {budget}; decoding {args.decoding}")
        for exposures, scores in run:
            curve.setdefault(round(exposures, 1), scores)  # step 0 is the same base in every run
        for step, said in sorted(probes.items()):
            for question, answer in said if step or not i else ():  # the base's answers once
                print(f"  step {step:4d}  {question}  ->  {answer}")
    print("exposures  " + "  ".join(f"{name:>28s}" for name in SERIES))
    for exposures, scores in sorted(curve.items()):
        cells = [f"{scores[n][0]:.3f} ± {scores[n][1]:.3f}" if n in scores else "-" for n in SERIES]
        print(f"{exposures:9.1f}  " + "  ".join(f"{c:>28s}" for c in cells))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    for name in SERIES:
        xs = [x for x in sorted(curve) if name in curve[x]]
        ax.errorbar(xs, [curve[x][name][0] for x in xs], yerr=[curve[x][name][1] for x in xs],
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
