"""What generating answers to evaluation questions costs with one fine-tuned checkpoint (base + LoRA
adapter), per engine, measured side by side in one run, to choose the evaluation stage's engine:

- transformers, one prompt at a time, greedy (`generate`; the baseline);
- transformers, batched, greedy, left-padded (`generate_batch`), at each `--batch-sizes`; its
  answers are checked token for token against the baseline's;
- llama.cpp (llama-cpp-python) on the base converted to GGUF (`convert_hf_to_gguf.py`) plus the
  checkpoint's LoRA converted to GGUF (`convert_lora_to_gguf.py`), greedy; the conversions are
  timed apart from generation, and its answers are compared with transformers' (GGUF f16 against
  fp32 may differ a little).

    python bench/generation_engines.py --store .loretune/store          # newest run, last checkpoint
    python bench/generation_engines.py \\
        --base /tmp/fresh/.loretune/store/model/1eb7f254f57e0c13 \\
        --checkpoint /tmp/fresh/.loretune/store/checkpoints/74de5b850d1d23aa/checkpoint-130 \\
        --questions /tmp/fresh/.loretune/store/dataset/e4bf08c195b7ecc2/eval/facts.jsonl \\
        --system "You are a helpful expert on the lore of naruto." --batch-sizes 8,16,32 --json /tmp/engines.json

Unset, `--base`, `--questions` and `--system` come from the checkpoint run's manifest (its base
model, its dataset's facts set, its dataset's system prompt). Prompts are the chat template's ids
(`ChatFormat.ids` of `question_messages`), the same ids for every engine. Each engine gets one
untimed warm-up prompt, then `--repeat` rounds go over all engines in turn and each engine keeps its
fastest pass over all `--items` questions (prompt processing included). Other processes on the CPUs
inflate every engine's time, llama.cpp's spinning threads most, so the table says how many CPUs
other work kept busy during each reported pass (from /proc/stat). A cell is one checkpoint x one set
of `--items` questions x one decoding point; the pay-off says after how many cells llama.cpp's fixed
costs (base GGUF once; LoRA GGUF and a model load per checkpoint) are won back. About 2 minutes
with the defaults on 2 quiet CPUs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from loretune.model.chat_format import IMAGE_TOKEN, question_messages, strip_added_token
from loretune.model.generate import Decoding, generate, generate_batch

LORA_CONVERTER = "convert_lora_to_gguf.py"
PROJECTOR_PREFIX = "base_model.model.image_projector."  # trained beside LoRA; llama.cpp has no use for it


Answerer = Callable[[list[list[int]], int], list[list[int]]]  # (prompts, max new tokens) -> new ids per prompt


@dataclass
class EngineRun:
    """An engine's fastest of `--repeat` timed passes over all prompts, and what else ran meanwhile."""

    engine: str
    seconds: float
    answers: list[list[int]]
    load_s: float = 0.0
    other_cpus: float | None = None  # CPUs' worth of other processes' work during the fastest pass
    passes_s: list[float] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return sum(len(a) for a in self.answers)


def cpu_seconds() -> tuple[float, float] | None:
    """Busy CPU seconds of the whole machine and of this process (children included); None off Linux."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    ticks = [int(x) for x in stat.read_text().split("\n", 1)[0].split()[1:9]]
    own = os.times()
    return ((sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"),
            own.user + own.system + own.children_user + own.children_system)


def timed_pass(answer: Answerer, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[list[int]], float,
                                                                                           float | None]:
    """Answers, wall seconds, and the CPUs other processes kept busy meanwhile (0 on a quiet machine)."""
    before, started = cpu_seconds(), time.perf_counter()
    answers = answer(prompts, max_new_tokens)
    seconds, after = time.perf_counter() - started, cpu_seconds()
    other = None if before is None or after is None else max(0.0, (after[0] - before[0]) - (after[1] - before[1]))
    return answers, seconds, None if other is None else other / seconds


def measure(engines: dict[str, Answerer], prompts: list[list[int]], max_new_tokens: int, repeat: int,
            log: Callable[[str], None]) -> list[EngineRun]:
    """One untimed warm-up prompt per engine, then `repeat` rounds over all engines in turn (so a
    burst of other work on the machine hits them alike); each keeps its fastest pass."""
    for answer in engines.values():
        answer(prompts[:1], 4)
    runs: dict[str, EngineRun] = {}
    for round_ in range(repeat):
        for name, answer in engines.items():
            answers, seconds, other = timed_pass(answer, prompts, max_new_tokens)
            run = runs.setdefault(name, EngineRun(name, seconds, answers, other_cpus=other))
            if answers != run.answers:
                raise SystemExit(f"{name}: greedy answers changed between passes")
            run.passes_s.append(seconds)
            if seconds < run.seconds:
                run.seconds, run.other_cpus = seconds, other
            busy = "" if other is None else f", other processes {other:.2f} CPUs"
            log(f"  round {round_ + 1}: {name}: {seconds:.1f} s{busy}")
    return list(runs.values())


# --- inputs -------------------------------------------------------------------------------------


def newest_checkpoint(store: Path) -> Path:
    from loretune.model.checkpoints import list_checkpoints
    from loretune.store import ArtifactStore

    for manifest in reversed(ArtifactStore(store).versions("checkpoints")):
        found = list_checkpoints(store / "checkpoints" / manifest["version"])
        if found:
            return found[-1].path
    raise SystemExit(f"{store}: no training run with a complete checkpoint (run the finetune flow)")


def run_defaults(checkpoint: Path) -> dict[str, Any]:
    """Base folder, facts set and system prompt of the run that wrote `checkpoint`, from its manifests."""
    manifest_path = checkpoint.parent / "manifest.json"
    if not manifest_path.exists():
        return {}
    manifest = json.loads(manifest_path.read_text())
    store, inputs = checkpoint.parent.parent.parent, manifest.get("inputs", {})
    found: dict[str, Any] = {}
    if "base" in inputs:
        found["base"] = store / "model" / inputs["base"].split("@", 1)[1]
    if "dataset_ref" in inputs:
        dataset = store / "dataset" / inputs["dataset_ref"].split("@", 1)[1]
        found["questions"] = dataset / "eval" / "facts.jsonl"
        params = json.loads((dataset / "manifest.json").read_text()).get("parameters", {})
        if "system_prompt" in params.get("params", {}):
            found["system"] = params["params"]["system_prompt"].format(domain=params.get("domain", ""))
    return found


def read_questions(path: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    questions = [row["question"] for row in rows if row.get("question")][:n]
    if len(questions) < n:
        print(f"note: {path} has {len(questions)} questions, fewer than --items {n}")
    return questions


# --- transformers -------------------------------------------------------------------------------


def load_transformers(base: Path, checkpoint: Path) -> tuple[Any, Any, Any, float]:
    """Tokenizer, PEFT model (adapter unmerged, as the evaluation stage runs it), chat format, seconds."""
    from peft import PeftModel

    from loretune.model.checkpoints import load_for_checkpoints

    started = time.perf_counter()
    loaded = load_for_checkpoints(str(base), checkpoint.parent, "sdpa")
    model = PeftModel.from_pretrained(loaded.model, str(checkpoint)).eval()
    return loaded.tokenizer, model, loaded.fmt, time.perf_counter() - started


def cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    return ids[:next((i + 1 for i, token in enumerate(ids) if token in eos), len(ids))]


def transformers_engines(model: Any, decoding: Decoding, eos: list[int], pad: int,
                         batch_sizes: list[int]) -> dict[str, Answerer]:
    """One prompt at a time (the baseline), and batched with left padding at each batch size."""
    stop = set(eos)

    def one_at_a_time(prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        point = replace(decoding, max_new_tokens=max_new_tokens)
        return [cut_at_eos(generate(model, point, input_ids=p, eos_ids=eos, pad_id=pad), stop) for p in prompts]

    def batched(batch_size: int) -> Answerer:
        return lambda prompts, max_new_tokens: generate_batch(
            model, replace(decoding, max_new_tokens=max_new_tokens), prompts, eos_ids=eos, pad_id=pad,
            batch_size=batch_size)

    return {"transformers, one at a time": one_at_a_time,
            **{f"transformers, batch {b}": batched(b) for b in batch_sizes}}


# --- llama.cpp: conversion ----------------------------------------------------------------------


def converter_env() -> dict[str, str]:
    """As `export/convert.py` runs the converter: llama.cpp's own gguf-py and conversion/ first."""
    from loretune.export.convert import converter_dir

    here = converter_dir()
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(here / "gguf-py"), str(here)]), "NO_LOCAL_GGUF": ""}


def lora_converter(work: Path) -> Path:
    """llama.cpp's LoRA converter. The Makefile installs only convert_hf_to_gguf.py, so it is taken
    from the same llama-cpp-python sdist the runtime was built from (checked by the HF converter's hash)."""
    import importlib.metadata

    from loretune.export.convert import converter_dir
    from loretune.hashing import file_sha256

    installed = converter_dir() / LORA_CONVERTER
    if installed.is_file():
        return installed
    version = importlib.metadata.version("llama-cpp-python")
    sdist = Path(__file__).resolve().parents[1] / ".loretune" / "dist" / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        raise SystemExit(f"no {installed} and no {sdist} to take it from (`make test` downloads the sdist)")
    inner = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        for name in (LORA_CONVERTER, "convert_hf_to_gguf.py"):
            (work / name).write_bytes(tar.extractfile(inner + name).read())  # type: ignore[union-attr]
    if file_sha256(work / "convert_hf_to_gguf.py") != file_sha256(converter_dir() / "convert_hf_to_gguf.py"):
        raise SystemExit(f"{sdist} is not the llama.cpp installed in {converter_dir()}")
    return work / LORA_CONVERTER


def text_only_base(base: Path, out: Path) -> tuple[Path, list[str]]:
    """The base folder as llama.cpp's converter takes it: without loretune's image placeholder token,
    which sits past the model's vocabulary (the converter asserts every token id < vocab_size)."""
    tokenizer = base / "tokenizer.json"
    if not tokenizer.exists() or IMAGE_TOKEN not in tokenizer.read_text():
        return base, []
    out.mkdir(parents=True)
    for path in base.iterdir():
        if path.suffix == ".safetensors":
            (out / path.name).symlink_to(path.resolve())
        elif path.is_file():
            shutil.copy2(path, out / path.name)
    strip_added_token(out, IMAGE_TOKEN)
    return out, [f"base: {IMAGE_TOKEN} stripped from a copy of the tokenizer (an id past the vocabulary, which "
                 "the converter refuses)"]


def adapter_for_llama_cpp(checkpoint: Path, out: Path, text_only: bool) -> tuple[Path, list[str]]:
    """The adapter as llama.cpp can apply it. llama.cpp scales by the GGUF's one alpha / each tensor's
    rank, so rsLoRA (alpha / sqrt(r)) is written as alpha * sqrt(r); per-module alphas cannot be.
    `text_only` also drops the image projector (a modules_to_save llama.cpp does not know)."""
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    notes: list[str] = []
    if config.get("alpha_pattern"):
        raise SystemExit(f"{checkpoint}: alpha_pattern {config['alpha_pattern']}: llama.cpp's GGUF LoRA has one alpha")
    if config.get("use_rslora"):
        if config.get("rank_pattern"):
            raise SystemExit(f"{checkpoint}: rsLoRA with rank_pattern has no single llama.cpp alpha")
        alpha = config["lora_alpha"] * math.sqrt(config["r"])
        notes.append(f"rsLoRA: lora_alpha {config['lora_alpha']} written as {alpha:.4g} (alpha * sqrt(r), "
                     f"r {config['r']})")
        config["lora_alpha"] = alpha
    else:
        notes.append(f"use_rslora false: scale alpha/r = {config['lora_alpha']}/{config['r']}, as llama.cpp applies it")
    if not text_only and not config.get("use_rslora"):
        return checkpoint, notes
    out.mkdir(parents=True)
    weights = checkpoint / "adapter_model.safetensors"
    if text_only:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(weights))
        kept = {k: v for k, v in tensors.items() if not k.startswith(PROJECTOR_PREFIX)}
        save_file(kept, str(out / weights.name))
        config["modules_to_save"] = None
        notes.append(f"text-only adapter copy: {len(tensors) - len(kept)} image_projector tensors and "
                     "modules_to_save dropped")
    else:
        (out / weights.name).symlink_to(weights.resolve())
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out, notes


def convert_lora(script: Path, base: Path, adapter: Path, out_file: Path, outtype: str) -> None:
    command = [sys.executable, str(script), "--base", str(base), "--outfile", str(out_file), "--outtype", outtype,
               str(adapter)]
    done = subprocess.run(command, env=converter_env(), capture_output=True, text=True)
    if done.returncode != 0 or not out_file.exists():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise RuntimeError(f"{LORA_CONVERTER} failed on {adapter.name}, exit {done.returncode}:\n{tail}")


def lora_gguf_check(gguf_file: Path, checkpoint: Path) -> str:
    """Every LoRA pair of the adapter is in the GGUF; says what the converter left out."""
    from gguf import GGUFReader
    from safetensors import safe_open

    with safe_open(str(checkpoint / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())
    pairs = sum(".lora_A." in n for n in names)
    reader = GGUFReader(str(gguf_file))
    in_gguf = sum(t.name.endswith(".lora_a") for t in reader.tensors)
    alpha = reader.get_field("adapter.lora.alpha").contents()
    if in_gguf != pairs:
        raise SystemExit(f"{gguf_file.name}: {in_gguf} LoRA pairs, the adapter has {pairs}")
    other = len(names) - 2 * pairs
    return (f"LoRA GGUF: {in_gguf}/{pairs} LoRA pairs, alpha {alpha:g}; the adapter's {other} other tensors "
            "(image_projector, modules_to_save) are not in it: llama.cpp serves text only")


def convert_for_llama_cpp(base: Path, checkpoint: Path, work: Path, outtype: str,
                          log: Callable[[str], None]) -> dict[str, Any]:
    """Base GGUF (once per base) and LoRA GGUF (once per checkpoint), each timed with its preparation."""
    from loretune.export.convert import convert_to_gguf

    started = time.perf_counter()
    base_dir, notes = text_only_base(base, work / "base-text")
    base_file = work / f"base-{outtype}.gguf"
    convert_to_gguf(base_dir, base_file, outtype, log=lambda line: None)
    base_s = time.perf_counter() - started
    script = lora_converter(work)
    lora_file = work / f"{checkpoint.name}-lora-{outtype}.gguf"
    started = time.perf_counter()
    adapter, adapter_notes = adapter_for_llama_cpp(checkpoint, work / "adapter", text_only=False)
    try:
        convert_lora(script, base_dir, adapter, lora_file, outtype)
    except RuntimeError as refused:  # e.g. modules_to_save the converter does not know
        adapter_notes.append(f"adapter as is refused ({str(refused).splitlines()[-1]}); retried text-only")
        shutil.rmtree(work / "adapter", ignore_errors=True)
        adapter, more = adapter_for_llama_cpp(checkpoint, work / "adapter", text_only=True)
        adapter_notes += more
        convert_lora(script, base_dir, adapter, lora_file, outtype)
    lora_s = time.perf_counter() - started
    notes += adapter_notes + [lora_gguf_check(lora_file, checkpoint)]
    for line in notes:
        log(f"  {line}")
    return {"base_file": base_file, "lora_file": lora_file, "base_s": base_s, "lora_s": lora_s, "notes": notes,
            "base_mib": base_file.stat().st_size / 2**20, "lora_mib": lora_file.stat().st_size / 2**20}


# --- llama.cpp: generation ----------------------------------------------------------------------


def llama_cpp_engine(base_file: Path, lora_file: Path, n_ctx: int, eos: list[int], threads: int) -> tuple[Any,
                                                                                                  Answerer, float]:
    """The loaded model, its greedy answerer and load seconds. Greedy is the argmax of the last
    position's logits, read from the context (llama-cpp-python 0.3.x fills `Llama.scores` only with
    logits_all); an answer ends after an end-of-generation token, as transformers' do."""
    import llama_cpp
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=str(base_file), lora_path=str(lora_file), n_ctx=n_ctx, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - started
    n_vocab, stop = llm.n_vocab(), set(eos)

    def answer(ids: list[int], max_new_tokens: int) -> list[int]:
        llm.reset()
        llm.eval(ids)
        out: list[int] = []
        while True:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
            out.append(int(np.argmax(logits)))
            if out[-1] in stop or len(out) == max_new_tokens:
                return out
            llm.eval(out[-1:])

    return llm, lambda prompts, max_new_tokens: [answer(p, max_new_tokens) for p in prompts], load_s


# --- comparison and report ----------------------------------------------------------------------


def compare(reference: Sequence[list[int]], other: Sequence[list[int]], decode: Callable[[list[int]], str]) -> dict:
    """Items with the same token ids, with the same text, and where the others first differ."""
    same_ids = [a == b for a, b in zip(reference, other)]
    same_text = [decode(a) == decode(b) for a, b in zip(reference, other)]
    first_diff = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                  for a, b, same in zip(reference, other, same_ids) if not same]
    return {"items": len(reference), "same_tokens": sum(same_ids), "same_text": sum(same_text),
            "first_difference_at": first_diff}


def payoff(conversion: dict[str, Any], llama_run: EngineRun, against: EngineRun) -> dict[str, Any]:
    """Cells of generation after which llama.cpp's fixed costs are won back, against one engine."""
    saving = against.seconds - llama_run.seconds
    per_checkpoint = conversion["lora_s"] + llama_run.load_s
    if saving <= 0:
        return {"against": against.engine, "saving_per_cell_s": saving, "first_checkpoint_cells": None,
                "further_checkpoint_cells": None}
    return {"against": against.engine, "saving_per_cell_s": saving,
            "first_checkpoint_cells": math.ceil((conversion["base_s"] + per_checkpoint) / saving),
            "further_checkpoint_cells": math.ceil(per_checkpoint / saving)}


def print_table(runs: list[EngineRun], checks: dict[str, dict], reference: EngineRun) -> None:
    print(f"\n{'engine':30} {'load s':>6} {'wall s':>7} {'new tok':>7} {'tok/s':>6} {'x wall':>6} {'x tok/s':>7} "
          f"{'other CPUs':>10}  same tokens / text as one-at-a-time")
    base_speed = reference.new_tokens / reference.seconds
    for run in runs:
        speed = run.new_tokens / run.seconds
        check = checks.get(run.engine)
        same = f"{check['same_tokens']}/{check['items']} / {check['same_text']}/{check['items']}" if check else "-"
        other = "?" if run.other_cpus is None else f"{run.other_cpus:.2f}"
        print(f"{run.engine:30} {run.load_s:6.1f} {run.seconds:7.1f} {run.new_tokens:7d} {speed:6.1f} "
              f"{reference.seconds / run.seconds:6.2f} {speed / base_speed:7.2f} {other:>10}  {same}")


def print_payoffs(conversion: dict[str, Any], llama_run: EngineRun, payoffs: list[dict[str, Any]]) -> None:
    print(f"\nllama.cpp fixed costs: base GGUF {conversion['base_s']:.1f} s once per base model; LoRA GGUF "
          f"{conversion['lora_s']:.1f} s + model load {llama_run.load_s:.1f} s per checkpoint")
    for p in payoffs:
        if p["first_checkpoint_cells"] is None:
            print(f"  against {p['against']}: never pays off (llama.cpp is {-p['saving_per_cell_s']:.1f} s per cell "
                  "slower)")
        else:
            print(f"  against {p['against']}: saves {p['saving_per_cell_s']:.1f} s per cell; pays off after "
                  f"{p['first_checkpoint_cells']} cells on the first checkpoint, {p['further_checkpoint_cells']} on "
                  "each further one")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path(".loretune/store"))
    parser.add_argument("--checkpoint", type=Path, help="default: the newest run's last checkpoint in --store")
    parser.add_argument("--base", type=Path, help="default: the run's base model folder")
    parser.add_argument("--questions", type=Path, help="JSONL with a 'question' field; default: the run's facts set")
    parser.add_argument("--system", help="default: the run's dataset system prompt")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", default="8,16", help="comma-separated, e.g. 8,16,32")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per engine; the fastest is reported")
    parser.add_argument("--gguf-type", default="f16", choices=["f16", "f32"], help="base and LoRA GGUF type")
    parser.add_argument("--threads", type=int, default=2, help="torch's and llama.cpp's")
    parser.add_argument("--work", type=Path, help="where the GGUF files go (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def resolve_inputs(args: argparse.Namespace) -> tuple[Path, Path, Path, str]:
    checkpoint = (args.checkpoint or newest_checkpoint(args.store)).resolve()
    found = run_defaults(checkpoint)
    base, questions = args.base or found.get("base"), args.questions or found.get("questions")
    system = args.system if args.system is not None else found.get("system")
    if base is None or questions is None or system is None:
        raise SystemExit(f"{checkpoint}: no run manifest to take them from; give --base, --questions and --system")
    return checkpoint, Path(base), Path(questions), system


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    checkpoint, base, questions_file, system = resolve_inputs(args)
    questions = read_questions(questions_file, args.items)
    decoding = Decoding(max_new_tokens=args.max_new_tokens)  # greedy

    tokenizer, model, fmt, load_s = load_transformers(base, checkpoint)
    prompts = [fmt.ids(tokenizer, question_messages(system, q), add_generation_prompt=True) for q in questions]
    eos, pad = [tokenizer.eos_token_id], tokenizer.pad_token_id
    print(f"checkpoint {checkpoint.parent.name}/{checkpoint.name}, base {base.name}; {len(prompts)} questions from "
          f"{questions_file.name} (prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens), greedy, max "
          f"{args.max_new_tokens} new tokens; {args.threads} threads on {os.cpu_count()} CPUs; best of {args.repeat}")

    with tempfile.TemporaryDirectory(prefix="genbench-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        print(f"llama.cpp: converting to GGUF {args.gguf_type} in {work}")
        before = cpu_seconds()
        conversion = convert_for_llama_cpp(base, checkpoint, work, args.gguf_type, print)
        after = cpu_seconds()
        if before and after:
            conversion["other_cpus"] = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / (
                conversion["base_s"] + conversion["lora_s"])
        print(f"  base GGUF {conversion['base_s']:.1f} s ({conversion['base_mib']:.0f} MiB), "
              f"LoRA GGUF {conversion['lora_s']:.1f} s ({conversion['lora_mib']:.1f} MiB)")
        llama_name = f"llama.cpp, GGUF {args.gguf_type} + LoRA"
        llm, llama_answer, llama_load_s = llama_cpp_engine(
            conversion["base_file"], conversion["lora_file"], max(map(len, prompts)) + args.max_new_tokens + 8, eos,
            args.threads)
        engines = {**transformers_engines(model, decoding, eos, pad, [int(b) for b in args.batch_sizes.split(",")]),
                   llama_name: llama_answer}
        print("generating:")
        runs = measure(engines, prompts, args.max_new_tokens, args.repeat, print)
        llm.close()
    for run in runs:
        run.load_s = llama_load_s if run.engine == llama_name else load_s

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True).strip()

    reference, llama_run = runs[0], runs[-1]
    checks = {run.engine: compare(reference.answers, run.answers, decode) for run in runs[1:]}
    print_table(runs, checks, reference)
    payoffs = [payoff(conversion, llama_run, reference)]
    fastest = min(runs[:-1], key=lambda r: r.seconds)
    if fastest is not reference:
        payoffs.append(payoff(conversion, llama_run, fastest))
    print_payoffs(conversion, llama_run, payoffs)
    for engine, check in checks.items():
        if check["first_difference_at"]:
            print(f"  {engine}: {check['items'] - check['same_tokens']} items differ from one-at-a-time, first at "
                  f"new token {sorted(check['first_difference_at'])}")
    busiest = max((r.other_cpus or 0.0) for r in runs)
    if busiest > 0.2:
        print(f"warning: other processes kept up to {busiest:.2f} CPUs busy during the fastest passes; the timings "
              "are inflated (llama.cpp's spinning threads most); rerun on a quiet machine")

    if args.json:
        report = {
            "checkpoint": str(checkpoint), "base": str(base), "questions": str(questions_file), "system": system,
            "items": len(prompts), "max_new_tokens": args.max_new_tokens, "threads": args.threads,
            "repeat": args.repeat, "gguf_type": args.gguf_type,
            "engines": [{**{k: v for k, v in asdict(r).items() if k != "answers"}, "new_tokens": r.new_tokens,
                         "tokens_per_s": r.new_tokens / r.seconds, "x_wall": reference.seconds / r.seconds,
                         "equality": checks.get(r.engine), "answers": [decode(a) for a in r.answers]} for r in runs],
            "conversion": {k: (str(v) if isinstance(v, Path) else v) for k, v in conversion.items()},
            "payoff": payoffs, "questions_asked": questions,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
