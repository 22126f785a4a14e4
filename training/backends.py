"""Which trainer runs, and loading the base model for it.

unsloth refuses to import without a CUDA GPU, so it is never imported here at module level; the
transformers + PEFT + TRL path works everywhere and is what CPU machines (CI, laptops) use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch


class BackendUnavailable(RuntimeError):
    """The configured training backend cannot run on this machine; the message says why."""


def resolve_backend(requested: str, log: Callable[[str], None] = print) -> str:
    cuda = torch.cuda.is_available()
    if requested == "unsloth":
        if not cuda:
            raise BackendUnavailable(
                "training.backend=unsloth needs a CUDA GPU, and torch sees none here; "
                "use training.backend=hf (or auto) on this machine"
            )
        raise BackendUnavailable(
            "training.backend=unsloth is not wired up yet (it has its own issue); use training.backend=hf"
        )
    if requested == "auto" and cuda:
        log("training: CUDA is available but the unsloth path is not wired up yet; using transformers + PEFT + TRL")
    return "hf"


def runtime(requested_backend: str) -> dict[str, str]:
    """Everything outside the config that changes what training and evaluation compute: the
    resolved backend, device and dtype, and the versions of the libraries that do the maths. Stages
    take it as a parameter, so it is part of their version and recorded in their manifest."""
    import importlib.metadata

    device = default_device()
    versions = {"torch": torch.__version__,  # with its build tag: a CUDA and a CPU build differ
                **{name: importlib.metadata.version(name) for name in ("transformers", "peft", "trl")}}
    return {"backend": resolve_backend(requested_backend, log=lambda message: None), "device": device,
            "dtype": str(model_dtype(device)).removeprefix("torch."), **versions}


def model_dtype(device: str) -> torch.dtype:
    """fp32 on a CPU (bf16 matmuls there are slow and lossy), bf16 on CUDA; the same for train and eval."""
    return torch.float32 if device == "cpu" else torch.bfloat16


def load_base(base_model: str, device: str, attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """Tokenizer and causal LM from the model stage's folder, with explicit dtype and attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=model_dtype(device),
                                                 attn_implementation=attn_implementation).to(device)
    return tokenizer, model


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_local_model(base_model: str) -> bool:
    return Path(base_model).is_dir()
