"""Loading a base model: device, dtype, attention and (on CUDA) 4-bit, the same for every stage.

Training, evaluation, export and the chat UI all load a model folder the same way, so a checkpoint
is scored and served with exactly the dtype it was trained in.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch


class BackendUnavailable(RuntimeError):
    """The configured training backend cannot run on this machine; the message says why."""


def model_dtype(device: str) -> torch.dtype:
    """fp32 on a CPU (bf16 matmuls there are slow and lossy), bf16 on CUDA; the same for train and eval."""
    return torch.float32 if device == "cpu" else torch.bfloat16


# CPU flags of instructions that multiply bf16 natively (x86: AVX512-BF16, AMX; Arm: the BF16 extension).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags as Linux lists them (x86 `flags`, Arm `Features`); empty elsewhere."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware. Only then is bf16 autocast faster than fp32
    (2.4x for SmolLM2 LoRA on AVX512-BF16 cores); elsewhere oneDNN emulates it, slower than fp32."""
    return bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS)


def training_precision(device: str, requested: str = "auto") -> str:
    """What training computes in: `bf16` (on CUDA always; on a CPU, bf16 autocast over fp32 master
    weights) or `fp32`. `auto` takes bf16 on a CPU only where it is native, so fast."""
    if device == "cuda":  # the weights themselves are bf16 there (`model_dtype`)
        return "bf16"
    if requested in ("fp32", "bf16"):
        return requested
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: str, precision: str) -> Any:
    """bf16 autocast over fp32 weights on a CPU when `precision` is bf16; a no-op otherwise (on
    CUDA the weights are bf16 already)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=device == "cpu" and precision == "bf16")


def quantization_config(load_in_4bit: bool, device: str) -> Any | None:
    """bitsandbytes NF4 with bf16 compute for QLoRA; refused off CUDA, where bitsandbytes has no kernels."""
    if not load_in_4bit:
        return None
    check_4bit(device)
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def check_4bit(device: str) -> None:
    if device != "cuda":
        raise BackendUnavailable("model.load_in_4bit needs a CUDA GPU (bitsandbytes' 4-bit kernels), and torch "
                                 "sees none here; set model.load_in_4bit: false on this machine")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BackendUnavailable("model.load_in_4bit needs bitsandbytes, which is not installed: "
                                 "pip install 'loretune[gpu]'")


def load_base(base_model: str, device: str, attn_implementation: str = "sdpa",
              load_in_4bit: bool = False) -> tuple[Any, Any]:
    """Tokenizer and causal LM from the model stage's folder, with explicit dtype and attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quantization = quantization_config(load_in_4bit, device)
    if quantization is not None:  # bitsandbytes places the quantised weights itself
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=model_dtype(device), device_map={"": 0},
                                                     quantization_config=quantization,
                                                     attn_implementation=attn_implementation)
        return tokenizer, model
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=model_dtype(device),
                                                 attn_implementation=attn_implementation).to(device)
    return tokenizer, model


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_local_model(base_model: str) -> bool:
    return Path(base_model).is_dir()
