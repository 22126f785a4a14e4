"""The versioned artifact store: `<store>/<stage>/<version>/` with data and a `manifest.json`.

Artifacts are immutable and published atomically: a stage builds into a scratch folder, and only a
complete build becomes visible, in one final step, so a crash or a failed stage never leaves half
an artifact and never touches one already stored. The root is a path or an fsspec URL.

On a local disk the final step is a rename of the complete folder (manifest included).

On object storage (`s3://bucket/prefix`, or any other fsspec URL) there is no rename, so:

1. the data is uploaded under a prefix of its own, `<stage>/<version>/attempt-<uuid>/`, that no
   reader looks at yet;
2. then one write of `<stage>/<version>/manifest.json` commits it: the manifest names that prefix
   (`data_prefix`), and readers trust only the prefix their manifest names;
3. the manifest is written with a conditional put (`pipe_file(mode="create")`: S3's
   `If-None-Match: *`), so of two writers publishing the same version at once exactly one
   manifest lands; the loser gets `FileExistsError`, deletes its own attempt prefix, and returns
   the winner's manifest. A backend that ignores the condition degrades to last-writer-wins, which
   stays consistent because every manifest names a complete prefix: each writer re-reads the
   manifest after writing and deletes its prefix unless that manifest names it.

An upload that fails half-way removes its attempt prefix; one killed outright leaves an attempt
prefix with no manifest naming it, which no reader ever looks at (and a later publish of the
same version simply writes a new attempt).

Crashes, full disks and concurrent runs (tests/test_faults.py, tests/test_concurrent_runs.py):

- A scratch folder is named after the process that builds in it (`<stage>-<version>~<pid>~<host>~...`).
  A process killed outright (SIGKILL, OOM, power cut) leaves its scratch behind; every publish first
  removes the scratch of processes of this host that are no longer alive. Scratch of another host (a
  store folder on a shared mount) is left alone unless it is older than `STALE_FOREIGN_SCRATCH`; a
  scratch folder with no owner in its name, older than a day. The remote-publish scratch is in the
  machine-local cache, so there the owner is always on this host.
- A build that runs out of space (ENOSPC) fails with `StoreFull`, naming the store, the disk, the
  bytes written when it filled (and the size of the stage's newest stored version, as an estimate
  of what it needs) and the space left; its scratch is removed and nothing published is touched.
- On a local store, publishes of one version are serialised by a lock (`flock` on
  `<store>/.locks/<stage>-<version>.lock`): the second publisher waits, then finds the version
  stored and returns its manifest without building. The kernel drops an flock when its holder dies,
  so a killed run never leaves a lock that blocks the next one. A wait longer than
  `LORETUNE_PUBLISH_LOCK_TIMEOUT` seconds (default a day) fails with a clear error. A remote store
  takes no lock (a file lock cannot span machines, and a lock service such as prefect-redis is not
  part of the stack): there the conditional manifest write above keeps a version single and the
  publish idempotent (both runs may build; one manifest lands, the other run gets it back).

Credentials never appear in a store URI (one with `user:secret@` is refused): for S3, s3fs and
botocore read `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or a profile, or an instance role)
and the endpoint from `AWS_ENDPOINT_URL` (`AWS_ENDPOINT_URL_S3`), as every AWS client does.

Machine-local (per machine, never shared, safe to delete):
- the remote-artifact cache, `LORETUNE_CACHE` (default `$LORETUNE_HOME/remote-cache`): a remote
  artifact that a stage reads is downloaded once, complete (into a partial folder renamed into
  place), to `<cache>/<hash of the store URL>/<stage>/<version>/`; a remote publish builds in
  `<cache>/.scratch/` and keeps its build there as the cached copy, so the publishing machine never
  downloads what it just uploaded. Under `$LORETUNE_HOME` rather than the system temp folder so it
  survives reboots, sits with the machine's other state and is cleared with it.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from loretune.config import state_dir
from loretune.failpoints import failpoint
from loretune.hashing import folder_sha256
from loretune.processes import alive

MANIFEST = "manifest.json"
SCRATCH = ".scratch"
ATTEMPT = "attempt-"  # a remote publish's data prefix: <stage>/<version>/attempt-<uuid>/
DATA_PREFIX = "data_prefix"  # the manifest field naming it
LOCKS = ".locks"  # per-version publish locks: <store>/.locks/<stage>-<version>.lock
LOCK_TIMEOUT_ENV = "LORETUNE_PUBLISH_LOCK_TIMEOUT"
LOCK_TIMEOUT = 24 * 3600.0  # seconds a publisher waits for another one building the same version
STALE_FOREIGN_SCRATCH = 7 * 24 * 3600.0  # another host's scratch in a shared store folder
STALE_UNOWNED_SCRATCH = 24 * 3600.0  # scratch whose name says no owner (made before owners were named)
_OWNER = re.compile(r"~(\d+)~([^~/]+)~[^~]*$")


class ArtifactMissing(FileNotFoundError):
    """A stage asked for an input version the store does not hold."""


class StoreURIError(ValueError):
    """A store URI that cannot be used as one (e.g. credentials written into it)."""


class StoreFull(OSError):
    """A stage's build or publish ran out of space (ENOSPC); the message says where and how much."""


class PublishLockTimeout(TimeoutError):
    """Another process held a version's publish lock longer than the timeout."""


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


def remote_cache_dir() -> Path:
    """Where remote artifacts are downloaded to and remote publishes build: machine-local."""
    return Path(os.environ.get("LORETUNE_CACHE") or state_dir() / "remote-cache").expanduser().resolve()


def storage_options(root: str) -> dict[str, Any]:
    """fsspec options for a store root: none for a local path; for a remote one, no listings cache,
    since other machines publish into the same store and a cached listing would hide their versions.
    Never credentials: those come from the environment (see the module docstring)."""
    protocol = fsspec.core.split_protocol(root)[0]
    return {} if protocol in (None, "file", "local") else {"use_listings_cache": False}


def check_uri(root: str) -> None:
    """Refuse a store URI with credentials in it: it would be written into manifests, ledgers and logs."""
    protocol = fsspec.core.split_protocol(root)[0]
    if protocol in (None, "file", "local"):
        return
    parts = urlsplit(root)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        # Not echoed: the URI holds a secret.
        raise StoreURIError(f"the {protocol}:// store URI has credentials in it (user:secret@...); give the bucket "
                            "and prefix only, and the credentials through the environment (AWS_ACCESS_KEY_ID, "
                            "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL), an AWS profile or an instance role")


class ArtifactStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = str(root)
        check_uri(self.root)
        self.fs, self._base = fsspec.core.url_to_fs(self.root, **storage_options(self.root))
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def ref(self, stage: str, version: str) -> ArtifactRef:
        return ArtifactRef(self.root, stage, version)

    def _path(self, *parts: str) -> str:
        return "/".join([self._base.rstrip("/"), *parts])

    def _manifest_text(self, stage: str, version: str) -> str | None:
        try:
            with self.fs.open(self._path(stage, version, MANIFEST), "r") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def manifest(self, stage: str, version: str) -> dict[str, Any] | None:
        text = self._manifest_text(stage, version)
        return None if text is None else json.loads(text)

    def exists(self, stage: str, version: str) -> bool:
        return self.manifest(stage, version) is not None

    def local_path(self, stage: str, version: str) -> Path:
        """A local folder holding the artifact: on a local disk the artifact itself; a remote one is
        downloaded once (exactly the data prefix its manifest names, plus the manifest) to the
        machine-local cache (`remote_cache_dir()`), complete before it is visible there."""
        text = self._manifest_text(stage, version)
        if text is None:
            raise ArtifactMissing(f"{self.root}: no artifact {stage}/{version}")
        if self.is_local:
            return Path(self._path(stage, version))
        manifest = json.loads(text)
        target = self._cache_target(stage, version)
        cached = target / MANIFEST
        if cached.exists() and _data_prefix(target) == manifest.get(DATA_PREFIX):
            return target
        partial = target.with_name(f"{version}.{uuid.uuid4().hex}.partial")
        try:
            partial.mkdir(parents=True)
            prefix = manifest.get(DATA_PREFIX)
            if prefix:
                source = self.fs._strip_protocol(self._path(stage, version, prefix)).rstrip("/")
                remote = [f for f in self.fs.find(source) if f.startswith(source + "/")]
                local = [str(partial / f[len(source) + 1:]) for f in remote]
                for path in local:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                if remote:
                    self.fs.get(remote, local)  # one batch: concurrent on an async filesystem such as s3fs
            else:  # published before attempt prefixes: the data sits beside the manifest
                self.fs.get(self._path(stage, version), str(partial), recursive=True)
            (partial / MANIFEST).write_text(text)
            _read_only(partial)
            self._place(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return target

    def _cache_target(self, stage: str, version: str) -> Path:
        return remote_cache_dir() / hashlib.sha256(self.root.encode()).hexdigest()[:12] / stage / version

    @staticmethod
    def _place(complete: Path, target: Path) -> None:
        """Move a complete local copy into place. A copy of the same data prefix already there (placed
        meanwhile by another thread or process) is kept; a stale one (another prefix, only possible on
        a backend without conditional writes) is replaced."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if (target / MANIFEST).exists():
            if _data_prefix(target) == _data_prefix(complete):
                return
            stale = target.with_name(f"{target.name}.{uuid.uuid4().hex}.stale")
            try:
                os.rename(target, stale)
            except FileNotFoundError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(complete, target)
        except OSError:
            if not (target / MANIFEST).exists():
                raise

    def publish(
        self,
        stage: str,
        version: str,
        build: Callable[[Path], dict[str, Any] | None],
        manifest_fields: dict[str, Any],
    ) -> dict[str, Any]:
        """Run `build(folder)` into scratch space, add the manifest, make it visible in one step.

        `build` returns a summary for the manifest: numbers go to `counts` (rows, documents, ...),
        anything else to `details`. If it raises, the scratch folder is removed and the store is
        exactly as before. If the version is published meanwhile (a concurrent run of the same
        fingerprint), that artifact stands and its manifest is returned.
        """
        if not self.is_local:  # between machines the conditional manifest write decides (module docstring)
            return self._publish(stage, version, build, manifest_fields)
        with self.lock(stage, version):
            stored = self.manifest(stage, version)
            if stored is not None:  # published while this run waited for the lock (or before): it stands
                return stored
            return self._publish(stage, version, build, manifest_fields)

    def _publish(self, stage: str, version: str, build: Callable[[Path], dict[str, Any] | None],
                 manifest_fields: dict[str, Any]) -> dict[str, Any]:
        scratch_root = Path(self._path(SCRATCH)) if self.is_local else remote_cache_dir() / SCRATCH
        scratch_root.mkdir(parents=True, exist_ok=True)
        remove_stale_scratch(scratch_root)
        owner = f"~{os.getpid()}~{socket.gethostname()}~"
        scratch = Path(tempfile.mkdtemp(prefix=f"{stage}-{version}{owner}", dir=scratch_root))
        try:
            failpoint("build", stage)
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
            if not self.is_local:
                manifest[DATA_PREFIX] = f"{ATTEMPT}{uuid.uuid4().hex}"
            (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            failpoint("publish:before-rename", stage)
            if self.is_local:
                committed = self._commit(scratch, stage, version)
            else:
                committed = self._commit_remote(scratch, stage, version, manifest)
            failpoint("publish:after-rename", stage)
            if not committed:
                return self.manifest(stage, version) or manifest  # a concurrent run won: its artifact stands
            return manifest
        except OSError as exc:
            if exc.errno != errno.ENOSPC or isinstance(exc, StoreFull):
                raise
            raise self._full(stage, version, scratch, exc) from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _full(self, stage: str, version: str, scratch: Path, exc: OSError) -> StoreFull:
        """The clear error for a build or publish that ran out of space."""
        written = _folder_bytes(scratch)
        where = Path(exc.filename) if exc.filename else scratch
        disk = next((p for p in [where, *where.parents] if p.exists()), scratch.parent)
        try:
            free = f"{_size(shutil.disk_usage(disk).free)} free there now"
        except OSError:
            free = "free space unknown"
        newest = self.versions(stage)
        needs = (f"; its newest stored version, {newest[-1]['version']}, takes {_size(newest[-1]['counts']['bytes'])}"
                 if newest and "bytes" in newest[-1].get("counts", {}) else "")
        return StoreFull(errno.ENOSPC, (
            f"store {self.root}: no space left on the disk of {disk} while publishing {stage}/{version} "
            f"({exc.strerror or exc}); the build had written {_size(written)} when it failed{needs}; {free}. "
            "Nothing was published and the stored versions are untouched: free some space (or move the "
            "store) and run again"))

    @contextmanager
    def lock(self, stage: str, version: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the publish lock of `stage/version` (module docstring), waiting up to `timeout` s."""
        if timeout is None:
            timeout = float(os.environ.get(LOCK_TIMEOUT_ENV) or LOCK_TIMEOUT)
        folder = (Path(self._path(LOCKS)) if self.is_local  # a remote store's: this machine's only
                  else remote_cache_dir() / LOCKS / hashlib.sha256(self.root.encode()).hexdigest()[:12])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stage}-{version}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            deadline, pause = time.monotonic() + timeout, 0.05
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise PublishLockTimeout(
                            f"store {self.root}: {stage}/{version} is being built by another run (lock {path}) and "
                            f"it did not finish within {timeout:.0f} s ({LOCK_TIMEOUT_ENV}); run again later") from None
                    time.sleep(pause)
                    pause = min(pause * 2, 2.0)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _commit(self, scratch: Path, stage: str, version: str) -> bool:
        """Rename a complete scratch folder into place; False if the version appeared meanwhile."""
        final = Path(self._path(stage, version))
        if self.exists(stage, version):
            return False  # published meanwhile by another run with the same fingerprint
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # a leftover without manifest: never a valid artifact; moved aside, then removed
            aside = scratch.with_name(f"{scratch.name}.leftover")
            os.rename(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        _read_only(scratch)  # a reader that tries to write into an artifact fails loudly
        try:
            os.rename(scratch, final)  # never replaces a non-empty folder: a version landed meanwhile stands
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and self.exists(stage, version):
                return False
            raise
        return True

    def _commit_remote(self, scratch: Path, stage: str, version: str, manifest: dict[str, Any]) -> bool:
        """Upload the data under its attempt prefix, then commit with one conditional manifest write
        (see the module docstring); False, with the attempt prefix removed, if another writer won."""
        if self.exists(stage, version):
            return False  # published already: upload nothing
        attempt = manifest[DATA_PREFIX]
        prefix = self._path(stage, version, attempt)
        won = False
        try:
            data = [p for p in sorted(scratch.rglob("*")) if p.is_file() and p != scratch / MANIFEST]
            if data:  # one batch: concurrent on an async filesystem such as s3fs
                self.fs.put([str(p) for p in data], [f"{prefix}/{p.relative_to(scratch).as_posix()}" for p in data])
            try:
                body = (scratch / MANIFEST).read_bytes()
                self.fs.pipe_file(self._path(stage, version, MANIFEST), body, mode="create")  # the commit
            except FileExistsError:
                pass  # another writer's manifest landed first: it stands
            # Re-read rather than trust the write: also right where a backend ignored the condition.
            won = self._named_prefix(stage, version) == attempt
        finally:
            if not won:
                try:
                    named = self._named_prefix(stage, version)
                except OSError:
                    named = attempt  # cannot tell: leave the prefix (litter at worst, never a hole)
                if named != attempt:
                    self._remove(prefix)
        if won:  # keep the build as this machine's cached copy: no download of what was just uploaded
            self._place_build(scratch, stage, version)
        return won

    def _remove(self, prefix: str) -> None:
        """Best effort: an attempt prefix no manifest names is never read, so a leftover is only litter."""
        try:
            if self.fs.exists(prefix):
                self.fs.rm(prefix, recursive=True)
        except OSError:
            pass

    def _named_prefix(self, stage: str, version: str) -> str | None:
        """The data prefix the stored manifest names (None: no manifest)."""
        return (self.manifest(stage, version) or {}).get(DATA_PREFIX)

    def _place_build(self, scratch: Path, stage: str, version: str) -> None:
        copy = scratch.with_name(f"{scratch.name}.cached")
        os.rename(scratch, copy)
        try:
            _read_only(copy)
            self._place(copy, self._cache_target(stage, version))
        finally:
            shutil.rmtree(copy, ignore_errors=True)

    def versions(self, stage: str) -> list[dict[str, Any]]:
        """Manifests of a stage's published versions, oldest first."""
        try:
            entries = self.fs.ls(self._path(stage), detail=False)
        except FileNotFoundError:
            return []
        manifests = [self.manifest(stage, Path(e).name) for e in entries if not Path(e).name.startswith(".")]
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


def remove_stale_scratch(scratch_root: Path) -> list[str]:
    """Remove the scratch folders left by dead processes (module docstring); returns their names."""
    removed, host, now = [], socket.gethostname(), time.time()
    try:
        entries = list(scratch_root.iterdir())
    except FileNotFoundError:
        return removed
    for folder in entries:
        found = _OWNER.search(folder.name)
        try:
            age = now - folder.lstat().st_mtime
        except FileNotFoundError:
            continue
        if found is None:
            stale = age > STALE_UNOWNED_SCRATCH
        elif found.group(2) != host:
            stale = age > STALE_FOREIGN_SCRATCH
        else:
            stale = not alive(int(found.group(1)))
        if stale:
            _remove_tree(folder)
            removed.append(folder.name)
    return removed


def _remove_tree(folder: Path) -> None:
    """rmtree that also removes a folder made read-only for its rename (`_read_only` keeps dirs 0o755)."""
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder, ignore_errors=True)
    else:
        folder.unlink(missing_ok=True)


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*") if folder.exists() else []:
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            pass
    return total


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _data_prefix(folder: Path) -> str | None:
    return json.loads((folder / MANIFEST).read_text()).get(DATA_PREFIX)


def _read_only(folder: Path) -> None:
    """Files 0o444, folders 0o755: a reader that tries to write into an artifact fails loudly, and a
    shared store is readable by others (mkdtemp made the folder private)."""
    for path in folder.rglob("*"):
        path.chmod(0o444 if path.is_file() else 0o755)
    folder.chmod(0o755)


def content_hash(folder: Path) -> str:
    """sha256 over (relative path, file sha256) of every data file, manifest excluded."""
    return folder_sha256(folder, exclude={MANIFEST})
