"""Which trainer runs: the backend a config asks for, resolved on this machine, and its runtime.

Two backends train the same LoRA config into the same checkpoint layout:

- `hf`: transformers + PEFT + TRL, everywhere (CPU machines, CI, laptops, and CUDA without unsloth);
  on CUDA it can load the base in 4-bit through bitsandbytes (QLoRA).
- `unsloth`: unsloth's FastLanguageModel on CUDA (its kernels, 4-bit or 16-bit). unsloth patches
  transformers, PEFT and TRL when it is imported and refuses to import without a GPU, so nothing
  here imports it: training with it runs in a process of its own that imports it first
  (`training/worker.py`). Whether it is installed is asked of the import system without importing it.

`auto` takes unsloth where CUDA and unsloth are both there, else hf; the backend it resolves to is
part of the training stage's version (`runtime`). Loading a base model is the model package's
(`model/loading.py`): evaluation, export and chat load one too, without the training loop.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Callable

import torch

from loretune.model.loading import BackendUnavailable, check_4bit, default_device, model_dtype, training_precision


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


def runtime(requested_backend: str, load_in_4bit: bool = False, precision: str = "auto") -> dict[str, str]:
    """Everything outside the config that changes what training and evaluation compute: the
    resolved backend, device, dtype and training precision (bf16 autocast on a CPU that has native
    bf16, so the same config trains differently on another CPU), and the versions of the libraries that do the maths. Stages
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
            "dtype": str(model_dtype(device)).removeprefix("torch."),
            "precision": training_precision(device, precision), **versions}


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
