"""sha256 of files and folders: one helper for every stage that names content by its hash.

A file is hashed once per process while it is unchanged (same path, inode, size and mtime): the
CLI, the flow's preflight and the model stage all ask for a model file's hash, and a 7B model
folder is gigabytes. A folder's hash covers relative paths and bytes, never where it lies, so the
same content hashes the same on every machine.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    path = Path(path)
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _file_sha256(path: str, inode: int, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def folder_sha256(folder: str | Path, exclude: Collection[str] = ()) -> str:
    """sha256 over (relative path, file sha256) of every file under `folder`; `exclude` names
    relative paths left out (an artifact's own manifest, which records this hash)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative not in exclude:
            digest.update(relative.encode() + b"\0" + file_sha256(path).encode() + b"\n")
    return digest.hexdigest()
