"""Where Prefect keeps a stage task's result and cache record: beside the artifacts.

A cached stage's Prefect cache record is a file named by the key `StageCache` returns (the one in
the artifact's manifest). Prefect looks it up in the task's result storage, by default the
machine-local `$PREFECT_HOME/storage`, so on another machine the key would be unknown and the stage
would run (to find its artifact already stored, and do nothing, but as Completed, not Cached).

With a remote store (s3://...), stage tasks therefore keep their results under
`<store>/.prefect-results/` (a dot folder: no stage), and a stage cached on one machine is a
Cached task run on any machine that shares the store and the Prefect API. A local store keeps
Prefect's default: one machine, one `$PREFECT_HOME`.

Prefect requires a result storage block to be saved on the server. The block
(`remote-file-system/loretune-results-<hash of the store URL>`) holds the base path and an fsspec
option only, never credentials: s3fs reads those from the environment on each machine, like the
store itself (loretune/store.py).

Shared between machines: the store, these results, the Prefect API server. Machine-local, each
configurable per machine, each safe to delete (a deleted one is rebuilt or re-downloaded):
- `$LORETUNE_HOME` (default `.loretune`): the state folder the ones below default into;
- `LORETUNE_CACHE` (default `$LORETUNE_HOME/remote-cache`): remote artifacts downloaded to read,
  and remote publishes' build scratch;
- `LORETUNE_MODEL_CACHE` (default `$LORETUNE_HOME/model-cache`): packaged base models, dequantised;
- `$LORETUNE_HOME/http-cache`: ingest's HTTP cache (conditional requests);
- `$LORETUNE_HOME/generation-cache`: answers already generated in evaluation and retention;
- `$LORETUNE_HOME/work`: training scratch (checkpoints before they are published);
- `PREFECT_HOME` (the CLI defaults it to `$LORETUNE_HOME/prefect`): Prefect's local settings and,
  with a local store, its result storage (`PREFECT_LOCAL_STORAGE_PATH`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from prefect.filesystems import RemoteFileSystem
from prefect.settings import PREFECT_API_URL

from loretune.store import ArtifactStore, storage_options
from loretune.tasks.stage import StageCache

RESULTS_FOLDER = ".prefect-results"

_saved: dict[tuple[str, str], RemoteFileSystem] = {}


def result_storage(store: str) -> RemoteFileSystem | None:
    """The result storage for stage tasks writing to `store`: None (Prefect's default) for a local
    store, else a saved RemoteFileSystem block on `<store>/.prefect-results`."""
    if ArtifactStore(store).is_local:
        return None
    basepath = f"{store.rstrip('/')}/{RESULTS_FOLDER}"
    key = (basepath, str(PREFECT_API_URL.value()))
    if key not in _saved:
        block = RemoteFileSystem(basepath=basepath, settings=storage_options(store))
        block.save(f"loretune-results-{hashlib.sha256(basepath.encode()).hexdigest()[:12]}", overwrite=True)
        _saved[key] = block
    return _saved[key]


def with_result_storage(task: Any, store: str | None) -> Any:
    """`task`, or for a cached stage writing to a remote store, a copy keeping its results there."""
    if store is None or not isinstance(getattr(task, "cache_policy", None), StageCache):
        return task
    storage = result_storage(store)
    return task if storage is None else task.with_options(result_storage=storage, persist_result=True)
