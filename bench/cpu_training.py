"""LoRA training speed on this CPU: loretune's trainer against a bare PEFT loop, fp32 and bf16
autocast, side by side in one run, on the same tokenised examples.

    python bench/cpu_training.py --dataset STORE/dataset/<version> [--model FOLDER] [--steps 24] [--warmup 12]

- The examples are a built dataset's training split, tokenised as training tokenises them
  (`training.sft.tokenized_splits`: the chat template, every answer labelled), batches of 8 grouped
  by length (transformers' `LengthGroupedSampler`, as the trainer groups them).
- The model is SmolLM2-135M-Instruct from the model cache (`--model` names another folder), LoRA
  r16 on all seven projections, AdamW at the default learning rate.
- bare: a plain loop (forward with labels, backward, step), the loss as any script computes it,
  over every position's logits. trainer: `training.sft.train` itself, with TRL's loss ("as it
  was") or the loss at labelled positions only (`training/loss.py`, "now").
- tokens/s counts real (non-padding) tokens between the trainer's logging points after `--warmup`
  steps; the bare loop counts the same steps. Losses are printed so the runs can be compared.
- The ratios are what issue 22 asks for: the trainer now / the bare loop (goal >= 0.9 at the same
  precision) and now / as it was (goal >= 2x).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from transformers import TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from loretune.model.base_models import describe_source, materialise
from loretune.model.chat_format import IGNORE, ChatFormat
from loretune.model.collator import FusionCollator
from loretune.model.loading import cpu_has_native_bf16, load_base
from loretune.training import sft
from loretune.training.recipe import Recipe


class Timer(TrainerCallback):
    """(step, seconds, real tokens so far) at each logging point."""

    def __init__(self):
        self.points: list[tuple[int, float, int]] = []
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs:
            self.points.append((state.global_step, time.perf_counter(), int(logs["num_tokens"])))
            self.losses.append(float(logs.get("loss", float("nan"))))


def bare_loop(model_dir: Path, rows: list[dict[str, Any]], cfg: Recipe, steps: int, warmup: int,
              bf16: bool) -> dict[str, Any]:
    tokenizer, model = load_base(str(model_dir), "cpu", cfg.attn_implementation, False)
    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, sft.lora_config(Recipe(lora=cfg.lora)))
    model.train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    order = list(LengthGroupedSampler(cfg.batch_size, lengths=[len(r["input_ids"]) for r in rows],
                                      generator=torch.Generator().manual_seed(cfg.seed)))
    collate = FusionCollator(tokenizer.pad_token_id, {}, 1)
    tokens, losses, start = 0, [], None
    for step in range((warmup + steps)):
        at = (step * cfg.batch_size) % len(order)
        batch = collate([rows[i] for i in order[at:at + cfg.batch_size]])
        if step == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step >= warmup:
            tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - start
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "first_loss": losses[0], "last_loss": losses[-1]}


def trainer_run(model_dir: Path, dataset: Path, cfg: Recipe, steps: int, warmup: int,
                labelled_only: bool) -> dict[str, Any]:
    sft.FusionSFTTrainer.labelled_only = labelled_only
    timer = Timer()
    total = warmup + steps
    run = dataclasses.replace(cfg, max_steps=total, save_steps=total, warmup_ratio=0.0)
    with tempfile.TemporaryDirectory() as out:
        sft.train(dataset_dir=dataset, features={}, clip_dim=8, base_model=str(model_dir), output_dir=Path(out),
                  cfg=run, image_tokens=2, log=lambda m: None, callbacks=[timer], backend="hf")
    # logging points every min(20, total // 2) steps: the first after warm-up to the last
    (s0, t0, n0), (s1, t1, n1) = [p for p in timer.points if p[0] >= warmup][0], timer.points[-1]
    return {"tokens_per_s": (n1 - n0) / (t1 - t0), "seconds": t1 - t0, "steps_timed": s1 - s0,
            "first_loss": timer.losses[0], "last_loss": timer.losses[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="a built dataset folder (STORE/dataset/<version>)")
    parser.add_argument("--model", type=Path, help="a model folder; default: SmolLM2-135M-Instruct, materialised")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=12, help="steps run before timing; a multiple of the log interval")
    parser.add_argument("--only", default="", help="comma-separated run names to measure (default: all)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(scratch) / "smollm2"
            materialise("smollm2-135m-instruct", describe_source("smollm2-135m-instruct"), model_dir)
        cfg = Recipe()
        tokenizer, _ = load_base(str(model_dir), "cpu", cfg.attn_implementation, False)
        fmt = ChatFormat.load(model_dir)
        rows = list(sft.tokenized_splits(args.dataset, tokenizer, fmt, {}, 2, cfg.max_length)["train"])
        rows = [r for r in rows if any(label != IGNORE for label in r["labels"])]
        runs = {
            "bare loop fp32": lambda: bare_loop(model_dir, rows, cfg, args.steps, args.warmup, bf16=False),
            "bare loop bf16": lambda: bare_loop(model_dir, rows, cfg, args.steps, args.warmup, bf16=True),
            "trainer as it was (TRL loss, fp32)": lambda: trainer_run(
                model_dir, args.dataset, Recipe(precision="fp32"), args.steps, args.warmup, labelled_only=False),
            "trainer, TRL loss, bf16": lambda: trainer_run(
                model_dir, args.dataset, Recipe(precision="bf16"), args.steps, args.warmup, labelled_only=False),
            "trainer now (labelled loss, auto)": lambda: trainer_run(
                model_dir, args.dataset, Recipe(), args.steps, args.warmup, labelled_only=True),
        }
        wanted = [n for n in runs if not args.only or any(w.strip() in n for w in args.only.split(","))]
        print(f"{len(rows)} examples, mean {sum(len(r['input_ids']) for r in rows) / len(rows):.0f} tokens; "
              f"CPU native bf16: {cpu_has_native_bf16()}; {torch.get_num_threads()} threads", flush=True)
        results = {}
        for name in wanted:
            results[name] = runs[name]()
            r = results[name]
            print(f"{name:40s} {r['tokens_per_s']:7.1f} tokens/s  loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}",
                  flush=True)
    now = results.get("trainer now (labelled loss, auto)")
    if now:
        for base in ("bare loop bf16", "bare loop fp32", "trainer as it was (TRL loss, fp32)"):
            if base in results:
                print(f"trainer now / {base}: {now['tokens_per_s'] / results[base]['tokens_per_s']:.2f}x")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
