"""Work inside one stage, spread across the Dask cluster the task runs on, or done in place.

On `runtime.task_runner: dask` the wide stages' tasks run on Dask workers (prefect-dask), and a
task there can hand pieces of its own work to the whole cluster: the source groups of ingest, the
host batches of image fetching, the CLIP batches of features. Dask's `worker_client` does that; it
also secedes the task's own thread while it waits, so the worker it sits on takes pieces too.
Anywhere else (the thread runner) the pieces run one after another in this process, exactly as
before, so the results, and the versions, are the same on either runner.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _worker() -> Any | None:
    """The Dask worker running this code, or None. Only a process Dask started imports distributed
    before this is called, so the thread runner never pays for importing it."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def width() -> int:
    """How many pieces can run at once: the cluster's threads on Dask, else 1."""
    if _worker() is None:
        return 1
    from distributed import worker_client

    with worker_client() as client:
        return max(1, sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()))


def fan_out(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """`[fn(item) for item in items]`, the items spread over the cluster when on Dask; results in order."""
    if _worker() is None or len(items) < 2:
        return [fn(item) for item in items]
    from distributed import worker_client

    with worker_client() as client:
        return client.gather(client.map(fn, items, pure=False))
