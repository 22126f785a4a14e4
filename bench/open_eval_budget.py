"""What the open-question grid costs per cell on this machine, to choose `evaluation.max_open_items`
and `evaluation.generation_batch_size` against the 4-minutes-a-checkpoint budget.

Takes a finished run from a store (its base model, its checkpoints, its dataset's open sets),
samples each open set as the evaluation stage does, and times `generate_cell` for every point of
the default decoding grid (one seed) at step 0 and at the last checkpoint. A sampled point runs
`evaluation.seeds` times in the stage, so the per-model total counts it that often.

    python bench/open_eval_budget.py --store .loretune/store --items 32 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from loretune.config import EvaluationConfig
from loretune.dataset import opensets
from loretune.dataset.layout import system_prompt
from loretune.evaluation import open_questions as oq
from loretune.model.checkpoints import at_step, list_checkpoints, load_adapters
from loretune.store import ArtifactStore


def newest(store: ArtifactStore, stage: str) -> Path:
    versions = store.versions(stage)
    if not versions:
        raise SystemExit(f"no {stage} artifact in the store (run the finetune flow first)")
    return store.local_path(stage, versions[-1]["version"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path(".loretune/store"))
    parser.add_argument("--items", type=int, default=EvaluationConfig().max_open_items)
    parser.add_argument("--batch-size", type=int, default=EvaluationConfig().generation_batch_size)
    args = parser.parse_args()
    store = ArtifactStore(args.store)
    checkpoints_dir = newest(store, "checkpoints")
    manifest = json.loads((checkpoints_dir / "manifest.json").read_text())
    by_stage = dict(ref.split("@") for ref in manifest["inputs"].values())  # {"model": version, ...}
    base, dataset = store.local_path("model", by_stage["model"]), store.local_path("dataset", by_stage["dataset"])
    checkpoints = list_checkpoints(checkpoints_dir)
    cfg = EvaluationConfig()
    sets = {name: opensets.sample_open(items, args.items, cfg.seed) for name, items in
            opensets.load_open_sets(dataset).items()}
    points = [oq.Point.from_dict(p.model_dump()) for p in cfg.decoding]
    loaded, model = load_adapters(str(base), checkpoints)
    print(f"{args.items} items a set, batches of {args.batch_size}; seconds per cell")
    print(f"{'model':16} {'set':11} " + " ".join(f"{p.name:>12}" for p in points) + f" {'grid total':>11}")
    for checkpoint in (None, checkpoints[-1]):
        total = 0.0
        for name, items in sets.items():
            times = []
            for point in points:
                started = time.perf_counter()
                with at_step(model, checkpoint):
                    oq.generate_cell(model, loaded.tokenizer, loaded.fmt, items, system_prompt(dataset),
                                     point.decoding, args.batch_size)
                times.append(time.perf_counter() - started)
                total += times[-1] * len(point.seeds(cfg.seeds))
            label = checkpoint.path.name if checkpoint else "step 0 (base)"
            print(f"{label:16} {name:11} " + " ".join(f"{t:12.1f}" for t in times))
        print(f"{'':16} {'':11} " + " " * 13 * len(points) + f"{total:11.0f}")


if __name__ == "__main__":
    main()
