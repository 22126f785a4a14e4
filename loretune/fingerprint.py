"""Stage versions: a fingerprint of input versions, parameters and code.

Same fingerprint, same artifact. The fingerprint must therefore be stable across processes and
machines (canonical JSON, no `hash()`), and it must change whenever the code that computes the
stage changes, or a fix would be hidden behind a stale artifact.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from loretune import import_graph

VERSION_LENGTH = 16


def canonical(value: Any) -> Any:
    """Turn config models, artifact refs and containers into plain, order-stable JSON values."""
    if hasattr(value, "fingerprint_token"):
        return value.fingerprint_token()
    if isinstance(value, BaseModel):
        return canonical(value.model_dump(mode="json"))
    if isinstance(value, dict):
        if len({str(k) for k in value}) != len(value):
            raise TypeError(f"cannot fingerprint a dict whose keys collide as strings: {sorted(map(repr, value))}")
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"cannot fingerprint a {type(value).__name__}: {value!r}")


def digest(value: Any, length: int = VERSION_LENGTH) -> str:
    payload = json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def code_version(*modules: ModuleType, files: Iterable[str | Path] = ()) -> str:
    """Hash of the source of the modules a stage runs; any edit to them re-runs the stage.

    `files` are data files that act as code: read at run time, they decide what the stage computes
    (the CLIP architecture JSON that open_clip builds the model from), so an edit to one must re-run
    the stage just like an edit to a module. Each is hashed by its name and content, never its
    absolute path, so the version is the same on every machine; their order does not matter. With
    no files the value is exactly what it was before `files` existed, so no stored artifact of a
    stage without data files is re-versioned.
    """
    sources = [inspect.getsource(m) for m in sorted(modules, key=lambda m: m.__name__)]
    payload = "\n".join(sources).encode()
    for name, content in sorted(_file_digest(Path(f)) for f in files):
        payload += f"\0file {name} sha256 {content}".encode()
    return hashlib.sha256(payload).hexdigest()[:12]


def stage_code_version(task_module: str, files: Iterable[str | Path] = (),
                       find: import_graph.Locate = import_graph.locate) -> str:
    """The code version of the stage whose Prefect task lives in `task_module`: a hash of the source
    of every library module that task imports, transitively (`import_graph.stage_modules`), each
    named by its dotted name, never its path, so a checkout anywhere gets the same version.

    Derived, not listed: a helper a stage starts to use is in its version from that commit on, and
    an edit to a module the stage never imports leaves its version, and its cached artifacts, alone.
    """
    modules = sorted(import_graph.stage_modules(task_module, find))
    payload = "".join(f"\0module {name}\n{_source(name, find)}" for name in modules).encode()
    for name, content in sorted(_file_digest(Path(f)) for f in files):
        payload += f"\0file {name} sha256 {content}".encode()
    return hashlib.sha256(payload).hexdigest()[:12]


def _source(module: str, find: import_graph.Locate) -> str:
    path = find(module)
    if path is None:
        raise ModuleNotFoundError(f"stage code version: no source for {module!r}")
    return path.read_text()


def _file_digest(path: Path) -> tuple[str, str]:
    try:
        return path.name, hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise FileNotFoundError(f"code_version: cannot read {path} ({exc.strerror or exc}); a stage's "
                                "data file must exist for its version to mean anything") from None


def stage_version(stage: str, code: str, inputs: dict[str, Any], attempt: int = 0) -> str:
    """The version of `stage` for these inputs; `attempt` > 0 names a later try at the same inputs.

    A stage whose artifact can be incomplete for reasons outside its inputs (images that timed out)
    publishes its next try as a new, immutable version rather than overwriting the stored one; the
    first try's version is exactly what it always was.
    """
    if attempt < 0:
        raise ValueError(f"attempt {attempt}: must be 0 (the first try) or more")
    if attempt == 0:
        return digest({"stage": stage, "code": code, "inputs": inputs})
    return digest({"stage": stage, "code": code, "inputs": inputs, "attempt": attempt})
