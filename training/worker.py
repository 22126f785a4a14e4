"""Training in a process of its own: for the unsloth backend, and in each process `accelerate launch` starts.

unsloth must be imported before transformers, PEFT and TRL in its process (it patches them), and a
Prefect task's process has long imported them. So `train_checkpoints` runs the unsloth backend as
`python -m loretune.training.worker request.json`, a process whose first import of any of them is
unsloth's; the hf backend trains in the caller's process, as it always has, or, with
`training.launcher: accelerate`, in the processes `accelerate launch` starts with this same module
(`training/launch.py`), where process 0 alone prints.

This module imports nothing but the standard library at module level, so `-m` starts clean.
The request is a JSON file beside the run's checkpoints (the features as an .npz beside it); the
worker prints its log lines to stdout and its progress as `PROGRESS <step> <max_steps>` lines,
which the caller turns back into its logger and progress bar. A failure exits non-zero with the
error's last line, which the caller raises as `TrainingFailed`, with the tail of the output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any, Callable

REQUEST_FILE = "train_request.json"
FEATURES_FILE = "train_features.npz"
PROGRESS = "PROGRESS "
# What a failing worker prints last: its process and error, one line, which the caller puts first in
# `TrainingFailed` (under `accelerate launch`, torchrun's own report of the failure follows it).
FAILED = "TRAINING FAILED "


class TrainingFailed(RuntimeError):
    """The training process failed; the message carries the end of its output."""


def train_checkpoints(*, backend: str, features: dict[str, Any], output_dir: Path, log: Callable[[str], None] = print,
                      progress: Callable[[int, int], None] | None = None, **kwargs: Any) -> list[Any]:
    """`sft.train` with the resolved `backend`: in this process for hf, in a fresh one for unsloth,
    in `cfg.num_processes` under `accelerate launch` for `cfg.launcher == "accelerate"` (hf only:
    `launch.check_launcher`). kwargs are `sft.train`'s (dataset_dir, clip_dim, base_model, cfg,
    image_tokens, clip, load_in_4bit, extra_train)."""
    from loretune.training import launch

    cfg = kwargs["cfg"]
    launch.check_launcher(backend, cfg.launcher, kwargs.get("load_in_4bit", False))
    if cfg.launcher == launch.ACCELERATE:
        return launch.train_distributed(backend=backend, features=features, output_dir=output_dir,
                                        num_processes=cfg.num_processes, log=log, progress=progress, **kwargs)
    if backend != "unsloth":
        from loretune.training import sft

        return sft.train(backend=backend, features=features, output_dir=output_dir, log=log, progress=progress,
                         **kwargs)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_request(output_dir, backend=backend, features=features, **kwargs)
    run_worker(output_dir, log, progress)
    from loretune.model.checkpoints import list_checkpoints

    return list_checkpoints(output_dir)


def write_request(output_dir: Path, *, backend: str, features: dict[str, Any], cfg: Any, **kwargs: Any) -> Path:
    import numpy as np

    np.savez(output_dir / FEATURES_FILE, **{sha: np.asarray(v, dtype=np.float32) for sha, v in features.items()})
    # Absolute paths: the worker runs in the run folder, not in the caller's working directory.
    folders = {k: str(Path(kwargs.pop(k)).resolve()) for k in ("dataset_dir", "base_model")}
    request = {"backend": backend, "cfg": dataclasses.asdict(cfg), **folders, **kwargs}
    path = output_dir / REQUEST_FILE
    path.write_text(json.dumps(request, indent=2))
    return path


def run_worker(output_dir: Path, log: Callable[[str], None], progress: Callable[[int, int], None] | None,
               python: str = sys.executable) -> None:
    """Run the worker on `output_dir`'s request, relaying its lines as they come."""
    command = [python, "-m", "loretune.training.worker", str((output_dir / REQUEST_FILE).resolve())]
    relay(command, output_dir, log, progress, what=" ".join(command[1:4]))


def relay(command: list[str], output_dir: Path, log: Callable[[str], None],
          progress: Callable[[int, int], None] | None, what: str, env: dict[str, str] | None = None) -> None:
    """Run `command` in `output_dir`, its log lines to `log` and its `PROGRESS` lines to `progress`
    as they come; a non-zero exit is `TrainingFailed` with the last lines of its output.
    `accelerate launch` (`training/launch.py`) runs the worker through here too."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "UNSLOTH_DISABLE_STATISTICS": "1", **(env or {})}
    tail: deque[str] = deque(maxlen=40)
    failures: list[str] = []
    # cwd: the run folder, since `-m` puts the cwd first on sys.path, where a checkout would shadow the install
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=output_dir.resolve()) as process:
        for line in process.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS):
                step, max_steps = map(int, line[len(PROGRESS):].split())
                if progress:
                    progress(step, max_steps)
                continue
            if line.startswith(FAILED):
                failures.append(line[len(FAILED):])
                continue
            tail.append(line)
            if line.strip():
                log(line)
    if process.returncode:
        raise TrainingFailed(f"the training process ({what}) exited with {process.returncode}"
                             + "".join(f"\n{failure}" for failure in failures) + "\nits last lines:\n" + "\n".join(tail))


def main(argv: list[str]) -> int:
    try:
        return train_request(Path(argv[0]))
    except BaseException as exc:
        import traceback

        traceback.print_exc()
        rank = os.environ.get("RANK")
        where = f"in process {rank}: " if rank is not None else ""
        said = " ".join(str(exc).split())  # one line
        print(f"{FAILED}{where}{type(exc).__name__}: {said}", flush=True)
        return 1


def train_request(request_file: Path) -> int:
    request = json.loads(request_file.read_text())
    if request["backend"] == "unsloth":
        import unsloth  # noqa: F401  first: it patches transformers, PEFT and TRL, which come next

    import numpy as np

    from loretune.training import sft
    from loretune.training.recipe import Recipe

    folder = request_file.parent
    with np.load(folder / FEATURES_FILE) as stored:
        features = {sha: stored[sha] for sha in stored.files}

    # Under `accelerate launch` every process trains; process 0 speaks for them all (the others'
    # errors still reach the output, and torchrun ends them all when one fails).
    speaks = int(os.environ.get("RANK", "0")) == 0
    if "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():  # "cuda" is this process's GPU from here on
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))

    def progress(step: int, max_steps: int) -> None:
        print(f"{PROGRESS}{step} {max_steps}", flush=True)

    sft.train(
        dataset_dir=Path(request["dataset_dir"]), features=features, clip_dim=request["clip_dim"],
        base_model=request["base_model"], output_dir=folder, cfg=Recipe.from_dict(request["cfg"]),
        image_tokens=request["image_tokens"], clip=request.get("clip"), backend=request["backend"],
        load_in_4bit=request.get("load_in_4bit", False), extra_train=request.get("extra_train", ()),
        log=(lambda line: print(line, flush=True)) if speaks else (lambda line: None),
        progress=progress if speaks else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
