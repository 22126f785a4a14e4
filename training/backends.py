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


def load_base(base_model: str, device: str) -> tuple[Any, Any]:
    """Tokenizer and causal LM from a local folder (the tiny model) or a Hugging Face id/path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype).to(device)
    return tokenizer, model


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_local_model(base_model: str) -> bool:
    return Path(base_model).is_dir()
