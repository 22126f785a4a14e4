"""Failpoints: named places where a crash test can kill this process, or fail a write, on purpose.

A failpoint does nothing (one environment lookup) unless `LORETUNE_FAILPOINTS` names it. The
variable holds comma-separated entries `name[@hit][=action]`:

- `name`: the failpoint's full name, e.g. `publish:before-rename:images` or `build:checkpoints`;
- `@hit`: act on that hit of the failpoint in this process (1 = the first, the default), so a
  loop's third pass can be chosen: `images:between-fetches@3`;
- `=action`: `kill` (the default): SIGKILL this process, no cleanup, no `finally`, exactly what a
  power cut, an OOM kill or `kill -9` does; `enospc`: raise `OSError(ENOSPC)` as a full disk would.

The environment passes to subprocesses (a training worker, llama.cpp's converter launched by
export), so a failpoint in code they run fires there too.

The failpoints (`tests/test_faults.py` kills at them):

| name | where |
|---|---|
| `build:<stage>` | `ArtifactStore.publish`, the start of a stage's build into scratch |
| `publish:before-rename:<stage>` | `publish`, data and manifest written to scratch; before the rename (local) or the manifest write (remote) |
| `publish:after-rename:<stage>` | `publish`, the version is visible; before the stage returns |
| `ingest:between-sources` | `ingest.sources.collect`, after each source is harvested |
| `images:between-fetches` | `multimodal.images.fetch_images`, after each URL |
| `training:after-checkpoint` | `training.sft`, after each checkpoint is saved |
| `evaluation:between-checkpoints` | `evaluation.binary_choice.evaluate_checkpoints`, after each checkpoint is scored |
| `export:after-merge` | `export.convert.export_checkpoint`, the merged folder written |
| `export:before-gguf` / `export:after-gguf` | `export.convert.convert_to_gguf`, around llama.cpp's converter subprocess |

Core: imports nothing from the stages or Prefect, so every layer may call it.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "LORETUNE_FAILPOINTS"
_hits: dict[str, int] = {}


def failpoint(name: str, detail: str | None = None) -> None:
    """Act if `LORETUNE_FAILPOINTS` names `name` (or `name:detail`); otherwise do nothing."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    full = f"{name}:{detail}" if detail else name
    for entry in spec.split(","):
        point, _, action = entry.strip().partition("=")
        point, _, hit = point.partition("@")
        if point != full:
            continue
        _hits[full] = _hits.get(full, 0) + 1
        if _hits[full] != int(hit or 1):
            continue
        if action in ("", "kill"):
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" (failpoint {full})")
        else:
            raise ValueError(f"{ENV}: unknown action {action!r} for {full} (kill or enospc)")
