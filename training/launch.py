"""Training across processes: the hf backend under `accelerate launch` (DDP), one process per device.

`training.launcher: accelerate` with `training.num_processes: N` runs the same worker the unsloth
backend runs in (`training/worker.py`: a JSON request beside the run's checkpoints, log lines and
`PROGRESS` lines relayed back, a failure raised as `TrainingFailed` with the end of the output),
started by accelerate's own launcher instead of a plain `python -m`:

    python -m accelerate.commands.launch --multi_gpu --num_processes N ... -m loretune.training.worker request.json

accelerate starts the processes through torchrun; each runs `sft.train`, and the Trainer does the
rest: it wraps the model in DistributedDataParallel (NCCL on GPUs; gloo on a CPU, where `use_cpu`
makes accelerate's state MULTI_CPU), shards each batch across the processes, and only process 0
saves checkpoints, so they have the single-process layout (plus one `rng_state_<rank>.pth` per
process for resuming, which stays in scratch like `rng_state.pth`). `sft.train` writes its run files
from process 0 only and records how many processes trained. `max_steps` stays the Trainer's
optimizer steps; each step sees `batch_size x gradient_accumulation_steps x num_processes` examples.

The unsloth backend trains on one GPU: asking for both is refused here (`check_launcher`), before
any work. This module imports nothing but the standard library at module level.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable

SINGLE = "single"
ACCELERATE = "accelerate"
# training.backend: auto resolves to unsloth where CUDA and unsloth are both there, so this is said
# of the resolved backend, whichever way it was asked for.
UNSLOTH_IS_SINGLE_GPU = "the unsloth backend trains on one GPU; use training.backend: hf with launcher: accelerate"


class LauncherUnavailable(ValueError):
    """The launcher the config asks for cannot run this training; the message says what to change."""


def check_launcher(backend: str, launcher: str, load_in_4bit: bool = False) -> None:
    """Refuse a launcher the resolved `backend` cannot train under, with what to change instead."""
    if launcher not in (SINGLE, ACCELERATE):
        raise LauncherUnavailable(f"training.launcher={launcher!r}: use {SINGLE!r} or {ACCELERATE!r}")
    if launcher != ACCELERATE:
        return
    if backend == "unsloth":
        raise LauncherUnavailable(UNSLOTH_IS_SINGLE_GPU)
    if load_in_4bit:
        raise LauncherUnavailable("model.load_in_4bit with training.launcher: accelerate is not supported: the "
                                  "4-bit base is placed on GPU 0 in every process; train 16-bit across GPUs, or "
                                  "4-bit with launcher: single")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(num_processes: int, request: Path, port: int, python: str = sys.executable) -> list[str]:
    """`accelerate launch` of the worker on `request`, every setting given (nothing left to a
    machine's accelerate config but what these do not name). Mixed precision is the Trainer's own
    (`bf16` in `sft.train`'s arguments), so the launcher says `no`."""
    processes = ["--multi_gpu", "--num_processes", str(num_processes)] if num_processes > 1 else \
        ["--num_processes", "1"]
    return [python, "-m", "accelerate.commands.launch", *processes, "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(port), "-m", "loretune.training.worker", str(request.resolve())]


def train_distributed(*, backend: str, features: dict[str, Any], output_dir: Path, num_processes: int,
                      log: Callable[[str], None] = print, progress: Callable[[int, int], None] | None = None,
                      **kwargs: Any) -> list[Any]:
    """`sft.train` in `num_processes` DDP processes under `accelerate launch`; the checkpoints in
    `output_dir`, as a single process would have written them. kwargs are `sft.train`'s."""
    from loretune.model.checkpoints import list_checkpoints
    from loretune.training import worker
    from loretune.training.sft import discard_incomplete

    check_launcher(backend, ACCELERATE, kwargs.get("load_in_4bit", False))
    output_dir.mkdir(parents=True, exist_ok=True)
    for partial in discard_incomplete(output_dir):  # here, before any process lists what to resume from
        log(f"train: removed {partial}, left half-written by an interrupted save")
    request = worker.write_request(output_dir, backend=backend, features=features, **kwargs)
    log(f"train: accelerate launch: {num_processes} processes (DDP), "
        f"{'gloo on the CPU' if _device() == 'cpu' else 'NCCL on the GPUs'}")
    # torchrun would set 1 thread per process; the machine's cores shared out instead
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, cores // num_processes)))}
    worker.relay(launch_command(num_processes, request, free_port()), output_dir, log, progress,
                 what=f"accelerate launch ({num_processes} processes)", env=env)
    return list_checkpoints(output_dir)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
