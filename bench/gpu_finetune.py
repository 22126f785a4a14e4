"""The finetune stages' libraries on a GPU, without Prefect: model folder -> train -> evaluate.

The lent GPU machine has no Prefect (and nothing can be installed there from a registry), so this
runs what the `train` and `evaluate` tasks run, with the same library calls and the demo's config
(deployments/naruto.yaml), on a dataset and features copied from a local store. The model folder
is built there: SmolLM2-135M-Instruct from its GGUF (the model stage's own conversion) when the
file is given, else SmolLM2's architecture with random weights and its real tokenizer.

    python bench/gpu_finetune.py --dataset DIR --features FILE.parquet --tokenizer DIR \
        [--gguf SmolLM2-135M-Instruct.Q4_1.gguf] --backend unsloth [--load-in-4bit] --work DIR --out result.json

Prints the evaluation table with baselines and the promotion decision, and each phase's time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def build_model(out: Path, gguf: Path | None, tokenizer_dir: Path) -> str:
    """The model stage's folder: weights, tokenizer, chat format (`base_models.prepare_chat`)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from loretune.model import base_models

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if gguf:
        tokenizer, model = base_models._from_gguf(gguf)
        kind = "SmolLM2-135M-Instruct (real weights, from its GGUF)"
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2))
        kind = "SmolLM2-135M architecture, RANDOM weights, real tokenizer"
    model.save_pretrained(out, safe_serialization=True)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    base_models.prepare_chat(out, None, "smollm2-135m-instruct")
    return kind


def read_features(path: Path) -> dict:
    """As multimodal.clip.read_features, without importing open_clip (not on the GPU machine)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return dict(zip(table.column("sha256").to_pylist(), table.column("embedding").to_numpy()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--gguf", type=Path)
    parser.add_argument("--backend", choices=["hf", "unsloth"], default="unsloth")
    parser.add_argument("--load-in-4bit", action="store_true")
    parser.add_argument("--config", default=str(ROOT / "deployments" / "naruto.yaml"))
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. training.max_steps=200")
    parser.add_argument("--memory-fraction", type=float, help="cap this process's share of GPU memory, to "
                        "meet a real CUDA out-of-memory error (the hf backend trains in this process)")
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from loretune.config import load_config, parse_overrides
    from loretune.dataset import evalsets, layout
    from loretune.evaluation import binary_choice, promotion
    from loretune.training import sft, worker
    from loretune.training.recipe import Recipe

    cfg = load_config(args.config, parse_overrides(args.set))
    if args.memory_fraction:
        import torch

        torch.cuda.set_per_process_memory_fraction(args.memory_fraction)
    times, started = {}, time.perf_counter()
    kind = build_model(args.work / "model", args.gguf, args.tokenizer)
    times["model"] = time.perf_counter() - started
    features = read_features(args.features)
    clip_dim = len(next(iter(features.values())))
    scratch = args.work / f"train-{args.backend}"
    shutil.rmtree(scratch, ignore_errors=True)

    started = time.perf_counter()
    worker.train_checkpoints(backend=args.backend, dataset_dir=args.dataset, features=features, clip_dim=clip_dim,
                             base_model=str(args.work / "model"), output_dir=scratch, cfg=Recipe.from_dict(cfg.training.model_dump()),
                             image_tokens=cfg.model.image_tokens, load_in_4bit=args.load_in_4bit,
                             log=lambda line: print(line, flush=True))
    times["train"] = time.perf_counter() - started
    published = args.work / f"checkpoints-{args.backend}"
    shutil.rmtree(published, ignore_errors=True)
    published.mkdir()
    checkpoints = sft.publish_checkpoints(scratch, published)
    run = json.loads((scratch / sft.TRAINING_RUN_FILE).read_text())
    print(f"training run: {json.dumps(run)}; times: train {times['train']:.1f}s")
    if args.no_eval:
        args.out.write_text(json.dumps({"model": kind, "times_s": times, "training_run": run}, indent=2))
        return 0

    started = time.perf_counter()
    sets, baselines = evalsets.load_eval_sets(args.dataset, [], cfg.evaluation.max_items, cfg.evaluation.seed)
    result = binary_choice.evaluate_checkpoints(
        base_model=str(args.work / "model"), checkpoints=checkpoints, sets=sets,
        system=layout.system_prompt(args.dataset), features=features, batch_size=cfg.evaluation.batch_size,
        max_length=cfg.training.max_length, attn_implementation=cfg.training.attn_implementation,
        log=lambda line: print(line, flush=True))
    times["evaluate"] = time.perf_counter() - started
    decision = promotion.promote(result.table, baselines, cfg.evaluation.promote.set, cfg.evaluation.promote.metric)

    print(f"\nmodel: {kind}; backend {args.backend}{' 4-bit' if args.load_in_4bit else ''}")
    print("| set | checkpoint | acc ± SE | Δ vs step 0 [95% CI] |\n|---|---|---|---|")
    for name in sets:
        for baseline, value in baselines.get(name, {}).items():
            print(f"| {name} | baseline: {baseline} | {value['value']:.3f} ± {value['stderr']:.3f} | |")
        for row in (r for r in result.table if r["set"] == name):
            delta = ("" if row["step"] == 0 else
                     f"{row['delta_acc']:+.3f} [{row['delta_acc_ci_low']:+.3f}, {row['delta_acc_ci_high']:+.3f}]")
            print(f"| {name} | {row['checkpoint']} | {row['acc']:.3f} ± {row['acc_stderr']:.3f} | {delta} |")
    print(f"promotion: {decision['reason']}")
    print("times: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    args.out.write_text(json.dumps({"model": kind, "backend": args.backend, "load_in_4bit": args.load_in_4bit,
                                    "times_s": times, "table": result.table, "baselines": baselines,
                                    "promotion": decision, "training_run": run}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
