"""LoRA fine-tuning speed and memory of the backends `hf` (transformers + PEFT) and `unsloth` on one GPU, to
check unsloth's claim of ~2x faster training with up to 70% less memory; ratios measured in one run.

    python bench/train_backends.py --work DIR [--models smollm2,1b] [--backends hf,unsloth] [--quant bf16,4bit]
        [--steps 30] [--warmup 5] [--seq-len 1024] [--batch 4] [--gradient-checkpointing on] [--out results.json]

- Random weights (seeded, bf16), built once under DIR: SmolLM2-135M-Instruct's architecture and a 1.1B Llama
  of TinyLlama's shape. The GPU machine has no internet, and speed and memory depend on shapes, not weights.
  `--model-folder smollm2=PATH` measures an existing folder instead.
- One tokenizer, a byte-level BPE (at most 8000 ids) trained on the sample lore: only the first few thousand
  rows of the larger vocabularies are used, which does not matter for speed (lm_head and loss span them all).
- Every sequence is `--seq-len` real tokens (the lore tokenised, concatenated, cut, repeated as needed), no
  padding, labels = input_ids, the same batches for every run: tokens/s counts real tokens only (batch x
  seq-len a step), and the backends' loss curves must agree.
- A plain PyTorch loop (AdamW, forward, backward, step), the same for both, not two trainers with their own
  defaults; bf16 autocast on CUDA, as loretune's trainer runs (bf16=True).
- Each backend in a process of its own: unsloth patches transformers, PEFT and TRL globally at import.
- Warm-up steps (Triton autotuning, torch.compile, the allocator growing) run but are not timed.
- Gradient checkpointing on by default (unsloth's memory claim rests on its offloaded checkpointing); `off`
  is loretune's default. Peak VRAM: max_memory_allocated from before the model loads to after the last step.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("loretune") is None:  # the GPU machine runs the checkout, not an install
    sys.path.insert(0, str(ROOT))

PAGES = ROOT / "loretune" / "samples" / "snapshot" / "fandom" / "pages"
RESULT = "RESULT "
# set before anything reads them: no network, no progress bars in the logs
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "UNSLOTH_DISABLE_STATISTICS": "1",
       "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}
SPECIAL = {"pad_token": "<|pad|>", "bos_token": "<|begin|>", "eos_token": "<|end|>"}
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=True),
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
               tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,  # the CPU test's;
                 num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=True),  # vocab: tokenizer's
}
SEED, LR = 0, 2e-4  # AdamW, no schedule: the speed of a step does not depend on them
PACKAGES = ["torch", "transformers", "peft", "trl", "unsloth", "unsloth_zoo", "bitsandbytes", "triton", "tokenizers"]


def lore_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(PAGES.glob("*.wiki"))]


def build_model(name: str, out: Path, tokenizer_dir: Path, device: str) -> Path:
    """Random bf16 weights made on `device`, config, generation config and tokenizer; reused once built."""
    marker = out / "built.json"
    if marker.exists() and json.loads(marker.read_text()) == SHAPES[name]:
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(**{"vocab_size": len(tokenizer), **SHAPES[name]}, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(SEED)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)  # safetensors, the only format transformers 5 writes
    tokenizer.save_pretrained(out)
    marker.write_text(json.dumps(SHAPES[name]))
    return out


def build_tokenizer_and_data(work: Path, seq_len: int, blocks: int) -> tuple[Path, Path]:
    """A byte-level BPE on the lore, as model/tiny_model.py's (which needs the installed package, and the GPU
    machine runs the bare checkout), and the lore as `blocks` rows of `seq_len` token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder, data = work / "tokenizer", work / f"data-{blocks}x{seq_len}.pt"
    if not (folder / "tokenizer.json").exists():
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        bpe.train_from_iterator(lore_texts(), trainers.BpeTrainer(
            vocab_size=8000, special_tokens=list(SPECIAL.values()), show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=8192, **SPECIAL).save_pretrained(folder)
    if not data.exists():
        import torch

        tokenizer = AutoTokenizer.from_pretrained(folder)
        ids = [i for text in lore_texts() for i in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
        ids = (ids * math.ceil(blocks * seq_len / len(ids)))[:blocks * seq_len]
        torch.save(torch.tensor(ids).view(blocks, seq_len), data)
    return folder, data


# -- worker: one backend, each (model, quant) in turn, a RESULT line each ---------------------------------------------

def import_unsloth(device: str) -> None:
    """unsloth must be the first of transformers/PEFT/TRL imported in its process: it patches them."""
    if device != "cuda":
        raise RuntimeError("unsloth needs a CUDA GPU (its kernels are Triton/CUDA); --device cpu measures hf only")
    if early := [m for m in ("transformers", "peft", "trl") if m in sys.modules]:
        raise RuntimeError(f"{early} imported before unsloth, which then cannot patch them")
    try:
        import unsloth  # noqa: F401
    except Exception as error:  # not installed, or refusing this machine
        raise RuntimeError(f"unsloth cannot be imported here: {type(error).__name__}: {error}") from error
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("unsloth needs a CUDA GPU and torch sees none")


def load_model(backend: str, folder: Path, quant: str, args: argparse.Namespace) -> Any:
    """The LoRA-wrapped model in training mode, with loretune's LoRA settings."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from loretune.config import LoraConfig

    lora, checkpointing = LoraConfig(), args.gradient_checkpointing == "on"
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        mode = "unsloth" if checkpointing else False
        model, _ = FastLanguageModel.from_pretrained(
            model_name=str(folder), max_seq_length=args.seq_len, dtype=torch.bfloat16, load_in_4bit=quant == "4bit",
            local_files_only=True, fix_tokenizer=False, offload_embedding=False,  # hf keeps it on the GPU too
            use_gradient_checkpointing=mode, random_state=SEED)
        torch.manual_seed(SEED)
        model = FastLanguageModel.get_peft_model(
            model, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
            use_rslora=lora.use_rslora, use_gradient_checkpointing=mode, random_state=SEED, bias="none")
        FastLanguageModel.for_training(model)
        return model
    cuda, reentrant = args.device == "cuda", {"use_reentrant": False}
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16) if quant == "4bit" else None
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.bfloat16 if cuda else torch.float32, attn_implementation="sdpa",
        device_map={"": 0} if cuda else None, quantization_config=quantization)
    if quant == "4bit":
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                     gradient_checkpointing_kwargs=reentrant)
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=reentrant)
        model.enable_input_require_grads()
    torch.manual_seed(SEED)
    return peft.get_peft_model(model, peft.LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
        use_rslora=lora.use_rslora, bias="none", task_type="CAUSAL_LM")).train()


def train(backend: str, folder: Path, quant: str, data: Any, args: argparse.Namespace) -> dict:
    import torch

    cuda = args.device == "cuda"
    if quant == "4bit" and not cuda:
        raise RuntimeError("4-bit needs a CUDA GPU (bitsandbytes' kernels)")
    if quant == "4bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("4-bit needs bitsandbytes, which is not installed here")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() / 2**30 if cuda else None  # above 0: an earlier run's leftovers
    started = time.perf_counter()
    model = load_model(backend, folder, quant, args)
    load_seconds = time.perf_counter() - started
    if quant == "4bit" and not any(type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes")
                                   for m in model.modules()):  # unsloth falls back to 16-bit with only a print
        raise RuntimeError("4-bit was asked for, but the model has no bitsandbytes Linear4bit layer")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    data, losses, seconds = data.to(args.device), [], []
    for step in range(args.warmup + args.steps):
        batch = data[step * args.batch:(step + 1) * args.batch]
        labels = batch.clone()  # a kernel that edits its labels in place must not edit the data
        sync()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
            loss = model(input_ids=batch, labels=labels, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    timed = seconds[args.warmup:]
    return {"tokens_per_s": args.batch * args.seq_len * len(timed) / sum(timed),
            "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "vram_before_load_gib": before, "load_seconds": load_seconds,
            "trainable_parameters": sum(p.numel() for p in params), "losses": losses, "step_seconds": seconds}


def worker(args: argparse.Namespace) -> int:
    def emit(model: str, quant: str, **row: Any) -> None:
        print(RESULT + json.dumps({"model": model, "quant": quant, "backend": args.backend, **row}), flush=True)

    combinations = [(m, q) for m in args.models for q in args.quant]
    try:
        if args.backend == "unsloth":
            import_unsloth(args.device)
    except Exception as error:
        for m, q in combinations:
            emit(m, q, error=str(error))
        return 1
    import torch

    data, folders = torch.load(args.data), dict(args.model_folder)
    for m, q in combinations:
        try:
            emit(m, q, **train(args.backend, Path(folders[m]), q, data, args))
        except Exception as error:
            traceback.print_exc()
            emit(m, q, error=f"{type(error).__name__}: {error}")
        gc.collect()  # the model went with train()'s frame, or with the exception's
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 0


# -- parent: build once, a worker process per backend, the table and the JSON -----------------------------------------

def run_worker(backend: str, args: argparse.Namespace, folders: dict[str, Path], data: Path) -> list[dict]:
    """The worker's rows, its output in WORK/worker-<backend>.log; a combination without a row gets an error row."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--backend", backend, "--data", str(data),
               "--models", ",".join(args.models), "--quant", ",".join(args.quant)]
    for option in ("work", "steps", "warmup", "seq_len", "batch", "gradient_checkpointing", "device"):
        command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    command += [a for m in args.models for a in ("--model-folder", f"{m}={folders[m]}")]
    log = args.work / f"worker-{backend}.log"
    with log.open("w") as out:  # a file, not a pipe: a leftover grandchild cannot hold it open
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=args.work,
                                   env={**os.environ, **ENV}, start_new_session=True)
        try:
            failure = f"worker exited with status {process.wait(timeout=args.timeout)}"
        except subprocess.TimeoutExpired:
            failure = f"worker timed out after {args.timeout:.0f} s"
        finally:  # its whole process group (compile workers too), also when this process is stopped
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    lines = log.read_text(errors="replace").splitlines()
    rows = {}
    for line in lines:
        if not line.startswith(RESULT):
            print(f"[{backend}] {line}", flush=True)
            continue
        with contextlib.suppress(ValueError, KeyError):
            row = json.loads(line[len(RESULT):])
            rows[row["model"], row["quant"]] = row
    last = " / ".join(line for line in lines[-3:] if line.strip() and not line.startswith(RESULT)) or "(none)"
    return [rows.get((m, q)) or {"model": m, "quant": q, "backend": backend,
                                 "error": f"{failure} without a result; its last output: {last}"}
            for m in args.models for q in args.quant]


def compare(rows: list[dict]) -> str:
    """Adds to each row its first and last loss, ratios to hf's and largest loss gap; returns the markdown table."""
    hf = {(r["model"], r["quant"]): r for r in rows if r["backend"] == "hf" and "error" not in r}
    columns = {"tokens/s": ("tokens_per_s", ".0f"), "peak VRAM GiB": ("peak_vram_gib", ".2f"),
               "loss step 1": ("loss_first", ".4f"), "loss last": ("loss_last", ".4f"),
               "max abs loss diff vs hf": ("max_abs_loss_diff_vs_hf", ".4f"),
               "tokens/s / hf": ("tokens_per_s_vs_hf", ".2f"), "VRAM / hf": ("peak_vram_vs_hf", ".2f")}
    table = ["| model | quant | backend | " + " | ".join(columns) + " |", "|" + " --- |" * (3 + len(columns))]
    for r in rows:
        ref = hf.get((r["model"], r["quant"]))
        if "error" not in r:
            r["loss_first"], r["loss_last"] = r["losses"][0], r["losses"][-1]
        if "error" not in r and ref:
            r["max_abs_loss_diff_vs_hf"] = max(abs(a - b) for a, b in zip(r["losses"], ref["losses"]))
            r["tokens_per_s_vs_hf"] = r["tokens_per_s"] / ref["tokens_per_s"]
            if r["peak_vram_gib"] and ref["peak_vram_gib"]:
                r["peak_vram_vs_hf"] = r["peak_vram_gib"] / ref["peak_vram_gib"]
        cells = [format(r[key], spec) if r.get(key) is not None else "" for key, spec in columns.values()]
        if "error" in r:
            cells[0] = "error: " + r["error"].replace("|", "/").replace("\n", " ")[:300]
        table.append(f"| {r['model']} | {r['quant']} | {r['backend']} | " + " | ".join(cells) + " |")
    return "\n".join(table)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="built models, tokenizer, data and logs (reused)")
    parser.add_argument("--models", default="smollm2,1b", help=f"of {list(SHAPES)}, or --model-folder's names")
    parser.add_argument("--model-folder", action="append", default=[], metavar="NAME=PATH",
                        help="an existing model folder instead of a built one, e.g. smollm2=/models/SmolLM2")
    parser.add_argument("--backends", default="hf,unsloth")
    parser.add_argument("--quant", default="bf16,4bit")
    for option, default in (("--steps", 30), ("--warmup", 5), ("--seq-len", 1024), ("--batch", 4)):
        parser.add_argument(option, type=int, default=default)
    parser.add_argument("--gradient-checkpointing", choices=["on", "off"], default="on")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: hf only, fp32, no 4-bit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for each backend's worker process")
    parser.add_argument("--out", type=Path, help="the results' JSON (default WORK/results.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=["hf", "unsloth"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.models, args.backends, args.quant = (v.split(",") for v in (args.models, args.backends, args.quant))
    # absolute, as a relative a/b is taken for a hub id
    args.model_folder = [(n, str(Path(p).resolve())) for n, _, p in (f.partition("=") for f in args.model_folder)]
    args.work = args.work.resolve()
    if not set(args.backends) <= {"hf", "unsloth"} or not set(args.quant) <= {"bf16", "4bit"}:
        parser.error("--backends: of hf,unsloth; --quant: of bf16,4bit")
    if args.steps < 1 or args.warmup < 0 or args.seq_len < 2 or args.batch < 1:
        parser.error("--steps, --seq-len and --batch must be positive, --warmup not negative")
    return args


def main() -> int:
    args = parse_args()
    os.environ.update(ENV)
    if args.worker:
        return worker(args)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # so run_worker's finally runs
    import torch

    from loretune.config import LoraConfig

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no GPU (--device cpu measures the hf backend only)")
    folders = {name: Path(path) for name, path in args.model_folder}
    if unknown := [m for m in args.models if m not in folders and m not in SHAPES]:
        raise SystemExit(f"unknown model(s) {unknown}: one of {list(SHAPES)}, or give --model-folder NAME=PATH")
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer_dir, data = build_tokenizer_and_data(args.work, args.seq_len, (args.warmup + args.steps) * args.batch)
    for m in args.models:
        folders.setdefault(m, build_model(m, args.work / m, tokenizer_dir, args.device))
    gc.collect()
    torch.cuda.empty_cache()  # the built models' memory, for the workers (a no-op without CUDA)
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"built in {time.perf_counter() - started:.0f} s; {gpu}; {args.steps} timed steps (+{args.warmup} warm-up) "
          f"of {args.batch} x {args.seq_len} tokens, gradient checkpointing {args.gradient_checkpointing}", flush=True)
    out = args.out or args.work / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                if k not in ("worker", "backend", "data")}
    versions = {p: next((d.version for d in importlib.metadata.distributions(name=p)), None) for p in PACKAGES}
    rows: list[dict] = []
    for backend in args.backends:  # the JSON after each backend: a run stopped midway keeps what it measured
        rows += run_worker(backend, args, folders, data)
        rows.sort(key=lambda r: (args.models.index(r["model"]), args.quant.index(r["quant"]),
                                 args.backends.index(r["backend"])))
        table = compare(rows)
        out.write_text(json.dumps({
            "gpu": gpu, "python": sys.version.split()[0], "versions": versions, "lora": LoraConfig().model_dump(),
            "settings": settings, "models": {m: str(folders[m]) for m in args.models}, "table": table,
            "results": rows}, indent=1))
    print(f"\n{table}\n\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
