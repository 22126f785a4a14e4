"""Resumable training scratch: one folder per checkpoints version, owned by the process using it.

A run that dies keeps its scratch, so the retry of the same version resumes from its last complete
checkpoint. Scratch of any other version is what a changed config or a finished-elsewhere run left
behind: it is removed, unless the process that owns it is still alive on this machine (two flow
runs training different versions side by side must not delete each other's work).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

OWNER_FILE = "owner.json"
PREFIX = "checkpoints-"


def claim(scratch: Path) -> None:
    """Mark `scratch` as this process's, creating it if needed."""
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))


def clean_others(keep: Path) -> list[str]:
    """Remove the other versions' scratch beside `keep` whose owner is gone; returns their names."""
    removed = []
    for folder in sorted(keep.parent.glob(f"{PREFIX}*")):
        if folder == keep or not folder.is_dir() or _owner_alive(folder):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed


def _owner_alive(folder: Path) -> bool:
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    if owner.get("host") != socket.gethostname():
        return True  # a shared state folder: another machine's process cannot be checked; keep it
    try:
        os.kill(int(owner["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError):
        return False
    except PermissionError:
        return True
    return True
