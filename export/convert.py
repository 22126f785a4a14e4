"""A checkpoint made ready to serve: adapter, merged 16-bit weights, GGUF (layout: `exports.py`).

The merged folder is the one thing every other format is made from: PEFT's `merge_and_unload`
folds LoRA into the base weights, the image projector (trained beside LoRA, which merging drops)
is saved next to it, and llama.cpp's own converter (`convert_hf_to_gguf.py`, from the same
llama.cpp that llama-cpp-python runs) turns it into GGUF. Quantised types come from llama.cpp's
quantiser in-process (`llama_model_quantize`), since llama-cpp-python builds no `llama-quantize`
binary. What each file really holds is read back from the file, not assumed: a k-quant falls back
to another type on tensors whose width is not a multiple of 256 (SmolLM2's 576).
"""

from __future__ import annotations

import collections
import ctypes
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from peft import PeftModel
from safetensors.torch import save_file

from loretune.export.layout import GGUF_DIR, PROJECTOR_DIR, PROJECTOR_WEIGHTS
from loretune.failpoints import failpoint
from loretune.hashing import file_sha256
from loretune.model.chat_format import IMAGE_TOKEN, strip_added_token
from loretune.model.checkpoints import MULTIMODAL_FILE, load_for_checkpoints
from loretune.model.packaged import NOTICE_DIR
from loretune.multimodal.fusion import PROJECTOR_NAME

# Everything a model folder needs besides its weights, copied from the model stage's folder.
FOLDER_FILES = ("generation_config.json", "loretune_chat.json", "loretune_model.json")
# What a checkpoint holds that serving does not need.
TRAINING_ONLY = frozenset({"trainer_state.json"})
# llama.cpp file types by the names people use; f16 is written by the converter itself.
QUANT_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
                "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}
GGUF_TYPES = ("f16", *QUANT_FTYPES)


class ExportError(RuntimeError):
    """An export cannot be made here; the message says why and what to do."""


def converter_dir() -> Path:
    """Where the Makefile installs llama.cpp's converter: inside the venv that runs llama-cpp-python,
    so converter and runtime come from one llama.cpp (`LORETUNE_LLAMA_CPP` points elsewhere)."""
    return Path(os.environ.get("LORETUNE_LLAMA_CPP") or Path(sys.prefix) / "share" / "loretune" / "llama.cpp")


def converter_version() -> dict[str, str]:
    """What the manifest records of the converter, and what the export stage's version keys on."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise ExportError(f"llama.cpp's converter is not installed here (no {script}): `make demo` or "
                          "`make test` installs it with llama-cpp-python, or set LORETUNE_LLAMA_CPP to a llama.cpp "
                          "checkout holding convert_hf_to_gguf.py, conversion/ and gguf-py/")
    try:
        runtime = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise ExportError("llama-cpp-python is not installed: `make demo` or `make test` builds and installs it") from None
    return {"llama_cpp_python": runtime, "converter_sha256": file_sha256(script)}


# --- adapter and merged folder -----------------------------------------------------------------


def copy_adapter(checkpoint: Path, out: Path) -> None:
    """The checkpoint as serving needs it: adapter (projector included) and its multimodal spec."""
    out.mkdir(parents=True)
    for path in sorted(checkpoint.iterdir()):
        if path.name not in TRAINING_ONLY:
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, out / path.name)
    shutil.copy2(checkpoint.parent / MULTIMODAL_FILE, out / MULTIMODAL_FILE)


def merge(base_model: Path, checkpoint: Path, out: Path, dtype: str = "bfloat16") -> dict[str, Any]:
    """Merge the checkpoint's LoRA into its base and save a plain 16-bit model folder at `out`,
    with the trained projector in `out.parent / projector/`. Returns sizes for the manifest."""
    loaded = load_for_checkpoints(str(base_model), checkpoint.parent)
    merged = PeftModel.from_pretrained(loaded.model, str(checkpoint)).merge_and_unload()
    projector = getattr(merged, PROJECTOR_NAME)
    delattr(merged, PROJECTOR_NAME)  # not part of the language model; saved on its own below
    merged = merged.to(getattr(torch, dtype))
    merged.save_pretrained(out, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out)
    strip_added_token(out, IMAGE_TOKEN)
    for name in FOLDER_FILES:
        if (base_model / name).exists():
            shutil.copy2(base_model / name, out / name)
    copy_notices(base_model, out)
    projector_dir = out.parent / PROJECTOR_DIR
    projector_dir.mkdir()
    save_file({k: v.detach().float().contiguous() for k, v in projector.state_dict().items()},
              str(projector_dir / PROJECTOR_WEIGHTS))
    shutil.copy2(checkpoint.parent / MULTIMODAL_FILE, projector_dir / MULTIMODAL_FILE)
    return {"dtype": dtype, "parameters": sum(p.numel() for p in merged.parameters()),
            "projector_parameters": sum(p.numel() for p in projector.parameters()),
            "bytes": folder_bytes(out)}


def copy_notices(base_model: Path, out: Path) -> None:
    """The base's licence texts (`model.packaged.NOTICE_DIR`: the Gemma Terms of Use for Gemma),
    which must ship with anything built from it."""
    if (base_model / NOTICE_DIR).is_dir():
        shutil.copytree(base_model / NOTICE_DIR, out / NOTICE_DIR, dirs_exist_ok=True)


def write_decoding(merged: Path, point: dict[str, Any]) -> None:
    """The evaluation's recommended decoding point as the merged model's defaults
    (`generation_config.json`), so `model.generate(...)` with no settings, and any tool that reads the
    file, decodes the way the evaluation found best. The sampling knobs are unset when greedy, as
    transformers wants them."""
    from transformers import GenerationConfig

    config = GenerationConfig.from_pretrained(merged) if (merged / "generation_config.json").exists() \
        else GenerationConfig()
    sampled = bool(point.get("do_sample"))
    config.do_sample = sampled
    config.num_beams = int(point.get("num_beams") or 1)
    config.repetition_penalty = float(point.get("repetition_penalty") or 1.0)
    config.max_new_tokens = int(point.get("max_new_tokens") or 48)
    config.temperature = (point.get("temperature") or 1.0) if sampled else None
    config.top_p = (point.get("top_p") or 1.0) if sampled else None
    config.top_k = (point.get("top_k") if point.get("top_k") is not None else 0) if sampled else None
    config.save_pretrained(merged)


# --- GGUF ---------------------------------------------------------------------------------------


def convert_to_gguf(model_dir: Path, out_file: Path, outtype: str = "f16",
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """llama.cpp's converter on a model folder, in its own process (it imports its own gguf-py)."""
    here = converter_dir()
    converter_version()  # a clear error when it is not installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here / "gguf-py"), str(here)]),
           "NO_LOCAL_GGUF": ""}
    command = [sys.executable, str(here / "convert_hf_to_gguf.py"), str(model_dir), "--outfile", str(out_file),
               "--outtype", outtype]
    started = time.monotonic()
    failpoint("export:before-gguf")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    failpoint("export:after-gguf")
    if done.returncode != 0 or not out_file.exists():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise ExportError(f"llama.cpp's converter failed on {model_dir.name} ({outtype}), exit {done.returncode}:\n{tail}")
    seconds = time.monotonic() - started
    log(f"export: {out_file.name}: converted in {seconds:.1f} s, {out_file.stat().st_size / 2**20:.0f} MiB")
    return {"file": out_file, "seconds": round(seconds, 2)}


def quantize(source: Path, out_file: Path, kind: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """A quantised GGUF from an f16 one, with llama.cpp's own quantiser."""
    import llama_cpp

    if kind not in QUANT_FTYPES:
        raise ExportError(f"export.gguf: {kind!r} is not a quantisation this export knows; use one of {list(GGUF_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_FTYPES[kind])
    params.nthread = os.cpu_count() or 1
    started = time.monotonic()
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(out_file).encode(), ctypes.byref(params))
    if status != 0 or not out_file.exists():
        raise ExportError(f"llama.cpp could not quantise {source.name} to {kind} (status {status})")
    seconds = time.monotonic() - started
    log(f"export: {out_file.name}: quantised in {seconds:.1f} s, {out_file.stat().st_size / 2**20:.0f} MiB")
    return {"file": out_file, "seconds": round(seconds, 2)}


def gguf_contents(path: Path) -> dict[str, Any]:
    """What a GGUF file really holds: tensors per type, and the chat template and EOS it carries."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    types = collections.Counter(t.tensor_type.name for t in reader.tensors)

    def field(name: str) -> Any:
        found = reader.get_field(name)
        return None if found is None else found.contents()

    return {"tensor_types": dict(sorted(types.items())), "chat_template": field("tokenizer.chat_template"),
            "eos_token_id": field("tokenizer.ggml.eos_token_id"), "file_type": field("general.file_type"),
            "bytes": path.stat().st_size}


def export_gguf(merged: Path, out_dir: Path, name: str, types: list[str],
                log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """f16 from the merged folder, then each quantised type from that f16 file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    f16 = out_dir / f"{name}-f16.gguf"
    made = {"f16": convert_to_gguf(merged, f16, "f16", log)}
    for kind in types:
        if kind != "f16":
            made[kind] = quantize(f16, out_dir / f"{name}-{kind}.gguf", kind, log)
    if "f16" not in types:  # made only to quantise from
        f16.unlink()
        made.pop("f16")
    return {kind: {"file": f"{GGUF_DIR}/{entry['file'].name}", "seconds": entry["seconds"],
                   **gguf_contents(entry["file"])} for kind, entry in made.items()}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())



# --- one checkpoint, every format, checked ------------------------------------------------------


class ParityFailed(ExportError):
    """The formats do not answer alike; the message names the probes and the numbers."""

    def __init__(self, report: Any):
        self.report = report
        super().__init__("export parity failed:\n  " + "\n  ".join(report.failures))


def describe(summary: dict[str, Any]) -> str:
    """One line of a parity summary, for the log."""
    nmse = ", ".join(f"{k} {v:.2e}" for k, v in summary["worst_nmse"].items())
    accuracy = ", ".join(f"{k} {v['acc']:.3f} ± {v['stderr']:.3f}" for k, v in summary["choice_accuracy"].items())
    stops = ", ".join(f"{k} {v}/{summary['probes']}" for k, v in summary["stops_at_eos"].items())
    return f"worst logits NMSE: {nmse}; binary choice: {accuracy or 'no items'}; stops at EOS: {stops}"


def export_checkpoint(*, base_model: Path, checkpoint: Path, out: Path, name: str, dtype: str, gguf_types: list[str],
                      questions: list[str], choice_items: list[dict[str, Any]], system: str, max_length: int,
                      max_new_tokens: int, gguf_skip_reason: str | None = None, decoding: dict[str, Any] | None = None,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """adapter/, merged/ + projector/, gguf/ and parity.json in `out`; raises `ParityFailed` (after
    writing parity.json) when the formats disagree. Returns what export.json records of the files."""
    from loretune.export import parity
    from loretune.export.layout import ADAPTER_DIR, MERGED_DIR, PARITY_FILE

    timings: dict[str, float] = {}
    started = time.monotonic()
    copy_adapter(checkpoint, out / ADAPTER_DIR)
    copy_notices(base_model, out)  # beside adapter/ and gguf/ too, not only inside merged/
    merged = merge(base_model, checkpoint, out / MERGED_DIR, dtype)
    timings["merge_s"] = round(time.monotonic() - started, 2)
    failpoint("export:after-merge")
    if decoding:
        write_decoding(out / MERGED_DIR, decoding)
        log(f"export: generation_config.json set to the evaluation's recommended decoding {decoding['name']!r} "
            f"({decoding.get('why', '')})")
    log(f"export: merged {checkpoint.name} into its base: {merged['parameters']:,} parameters, {dtype}, "
        f"{merged['bytes'] / 2**20:.0f} MiB; projector {merged['projector_parameters']:,} parameters kept beside it")
    ggufs: dict[str, dict[str, Any]] = {}
    if gguf_skip_reason:
        log(f"export: no GGUF: {gguf_skip_reason}")
    elif gguf_types:
        started = time.monotonic()
        ggufs = export_gguf(out / MERGED_DIR, out / GGUF_DIR, name, gguf_types, log)
        timings["gguf_s"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    report = parity.verify_export(base_model=base_model, checkpoint=checkpoint, merged_dir=out / MERGED_DIR,
                                  gguf_files={kind: out / entry["file"] for kind, entry in ggufs.items()},
                                  questions=questions, choice_items=choice_items, system=system,
                                  max_length=max_length, max_new_tokens=max_new_tokens, log=log)
    timings["parity_s"] = round(time.monotonic() - started, 2)
    log("export: parity " + ("passed" if report.passed else "FAILED") + f" in {timings['parity_s']:.0f} s: "
        + describe(report.summary))
    (out / PARITY_FILE).write_text(json.dumps(report.as_dict(), indent=2, default=float))
    if not report.passed:
        raise ParityFailed(report)
    return {"merged": merged, "gguf": {k: {f: v for f, v in e.items() if f != "chat_template"} for k, e in ggufs.items()},
            "gguf_skipped": gguf_skip_reason, "parity": report.summary, "timings": timings,
            "adapter_bytes": folder_bytes(out / ADAPTER_DIR)}
