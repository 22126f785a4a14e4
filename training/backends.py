"""Which trainer runs, and loading the base model for it.

Two backends train the same LoRA config into the same checkpoint layout:

- `hf`: transformers + PEFT + TRL, everywhere (CPU machines, CI, laptops, and CUDA without unsloth);
  on CUDA it can load the base in 4-bit through bitsandbytes (QLoRA).
- `unsloth`: unsloth's FastLanguageModel on CUDA (its kernels, 4-bit or 16-bit). unsloth patches
  transformers, PEFT and TRL when it is imported and refuses to import without a GPU, so nothing
  here imports it: training with it runs in a process of its own that imports it first
  (`training/worker.py`). Whether it is installed is asked of the import system without importing it.

`auto` takes unsloth where CUDA and unsloth are both there, else hf; the backend it resolves to is
part of the training stage's version (`runtime`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any, Callable

import torch


class BackendUnavailable(RuntimeError):
    """The configured training backend cannot run on this machine; the message says why."""


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def resolve_backend(requested: str, log: Callable[[str], None] = print) -> str:
    cuda = torch.cuda.is_available()
    if requested == "unsloth":
        if not cuda:
            raise BackendUnavailable(
                "training.backend=unsloth needs a CUDA GPU, and torch sees none here; "
                "use training.backend=hf (or auto) on this machine"
            )
        if not unsloth_installed():
            raise BackendUnavailable("training.backend=unsloth: unsloth is not installed in this environment; "
                                     "pip install 'loretune[gpu]', or use training.backend=hf")
        return "unsloth"
    if requested == "auto" and cuda:
        if unsloth_installed():
            return "unsloth"
        log("training: CUDA is available but unsloth is not installed; using transformers + PEFT + TRL")
    return "hf"


def runtime(requested_backend: str, load_in_4bit: bool = False) -> dict[str, str]:
    """Everything outside the config that changes what training and evaluation compute: the
    resolved backend, device and dtype, and the versions of the libraries that do the maths. Stages
    take it as a parameter, so it is part of their version and recorded in their manifest."""
    device = default_device()
    backend = resolve_backend(requested_backend, log=lambda message: None)
    if load_in_4bit:
        check_4bit(device)
    libraries = ["transformers", "peft", "trl"]
    if backend == "unsloth":
        libraries += ["unsloth", "unsloth_zoo"]
    if load_in_4bit:
        libraries.append("bitsandbytes")
    versions = {"torch": torch.__version__,  # with its build tag: a CUDA and a CPU build differ
                **{name: _version(name) for name in libraries}}
    return {"backend": backend, "device": device,
            "dtype": str(model_dtype(device)).removeprefix("torch."), **versions}


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def model_dtype(device: str) -> torch.dtype:
    """fp32 on a CPU (bf16 matmuls there are slow and lossy), bf16 on CUDA; the same for train and eval."""
    return torch.float32 if device == "cpu" else torch.bfloat16


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
