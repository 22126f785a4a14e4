"""The versioned artifact store: `<store>/<stage>/<version>/` with data and a `manifest.json`.

Artifacts are immutable and published atomically: a stage builds into a scratch folder and only a
complete folder (manifest last) is moved into place, so a crash or a failed stage never leaves
half an artifact and never touches one already stored. The root is a path or an fsspec URL; on a
local disk the final move is a rename, on object storage the manifest is the commit marker
(readers ignore a version without one).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from loretune.hashing import folder_sha256

MANIFEST = "manifest.json"
SCRATCH = ".scratch"


class ArtifactMissing(FileNotFoundError):
    """A stage asked for an input version the store does not hold."""


@dataclass(frozen=True)
class ArtifactRef:
    """What stages pass each other: which store, which stage, which version."""

    store: str
    stage: str
    version: str

    def fingerprint_token(self) -> str:
        # The store's location is not part of a version: the same inputs give the same artifact
        # wherever it is kept.
        return f"{self.stage}@{self.version}"

    def local_path(self) -> Path:
        return ArtifactStore(self.store).local_path(self.stage, self.version)

    def manifest(self) -> dict[str, Any]:
        manifest = ArtifactStore(self.store).manifest(self.stage, self.version)
        if manifest is None:
            raise ArtifactMissing(f"{self.store}: no artifact {self.stage}/{self.version}")
        return manifest


class ArtifactStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = str(root)
        self.fs, self._base = fsspec.core.url_to_fs(self.root)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def ref(self, stage: str, version: str) -> ArtifactRef:
        return ArtifactRef(self.root, stage, version)

    def _path(self, *parts: str) -> str:
        return "/".join([self._base.rstrip("/"), *parts])

    def manifest(self, stage: str, version: str) -> dict[str, Any] | None:
        try:
            with self.fs.open(self._path(stage, version, MANIFEST), "r") as f:
                return json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def exists(self, stage: str, version: str) -> bool:
        return self.manifest(stage, version) is not None

    def local_path(self, stage: str, version: str) -> Path:
        """A local folder holding the artifact; remote artifacts are downloaded once to a cache."""
        if not self.exists(stage, version):
            raise ArtifactMissing(f"{self.root}: no artifact {stage}/{version}")
        if self.is_local:
            return Path(self._path(stage, version))
        cache = Path(os.environ.get("LORETUNE_CACHE", Path(tempfile.gettempdir()) / "loretune-cache"))
        target = cache / hashlib.sha256(self.root.encode()).hexdigest()[:12] / stage / version
        if not (target / MANIFEST).exists():
            partial = target.with_name(f"{version}.{uuid.uuid4().hex}.partial")
            self.fs.get(self._path(stage, version), str(partial), recursive=True)
            partial.replace(target) if not target.exists() else shutil.rmtree(partial)
        return target

    def publish(
        self,
        stage: str,
        version: str,
        build: Callable[[Path], dict[str, Any] | None],
        manifest_fields: dict[str, Any],
    ) -> dict[str, Any]:
        """Run `build(folder)` into scratch space, add the manifest, move the folder into place.

        `build` returns a summary for the manifest: numbers go to `counts` (rows, documents, ...),
        anything else to `details`. If it
        raises, the scratch folder is removed and the store is exactly as before.
        """
        scratch_root = Path(self._path(SCRATCH)) if self.is_local else Path(tempfile.gettempdir())
        scratch_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"{stage}-{version}-", dir=scratch_root))
        try:
            summary = build(scratch) or {}
            counts = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            files = sorted(p for p in scratch.rglob("*") if p.is_file())  # before the manifest exists
            manifest = {
                **manifest_fields,
                "stage": stage,
                "version": version,
                # Microseconds: versions() orders by this, and two versions can land in one second.
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
                "counts": {**counts, "files": len(files), "bytes": sum(p.stat().st_size for p in files)},
                "details": {k: v for k, v in summary.items() if k not in counts},
                "content_hash": content_hash(scratch),
            }
            (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            if not self._commit(scratch, stage, version):
                return self.manifest(stage, version) or manifest  # a concurrent run won: its artifact stands
            return manifest
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _commit(self, scratch: Path, stage: str, version: str) -> bool:
        """Move a complete scratch folder into place; False if the version appeared meanwhile."""
        final = self._path(stage, version)
        if self.exists(stage, version):
            return False  # published meanwhile by another run with the same fingerprint
        if self.is_local:
            Path(final).parent.mkdir(parents=True, exist_ok=True)
            if Path(final).exists():  # a leftover without manifest: never a valid artifact
                shutil.rmtree(final)
            for path in scratch.rglob("*"):  # a reader that tries to write into an artifact fails loudly
                path.chmod(0o444 if path.is_file() else 0o755)
            scratch.chmod(0o755)  # mkdtemp made it private; a shared store is read by others
            os.rename(scratch, final)
            return True
        data = [p for p in scratch.rglob("*") if p.is_file() and p != scratch / MANIFEST]
        for p in data:
            self.fs.put_file(str(p), f"{final}/{p.relative_to(scratch).as_posix()}")
        self.fs.put_file(str(scratch / MANIFEST), f"{final}/{MANIFEST}")  # the commit marker
        return True

    def versions(self, stage: str) -> list[dict[str, Any]]:
        """Manifests of a stage's published versions, oldest first."""
        try:
            entries = self.fs.ls(self._path(stage), detail=False)
        except FileNotFoundError:
            return []
        manifests = [self.manifest(stage, Path(e).name) for e in entries]
        return sorted((m for m in manifests if m), key=lambda m: m["created_at"])

    def stages(self) -> list[str]:
        try:
            entries = self.fs.ls(self._base, detail=True)
        except FileNotFoundError:
            return []
        return sorted(
            Path(e["name"]).name for e in entries
            if e["type"] == "directory" and not Path(e["name"]).name.startswith(".")
        )


def content_hash(folder: Path) -> str:
    """sha256 over (relative path, file sha256) of every data file, manifest excluded."""
    return folder_sha256(folder, exclude={MANIFEST})
