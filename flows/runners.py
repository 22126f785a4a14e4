"""The task runner a flow's wide stages run on: `runtime.task_runner` in the domain config.

thread: Prefect's thread pool in the flow run's process, the default on one machine. dask:
prefect-dask's `DaskTaskRunner`, on the cluster at `runtime.dask_address` (a team's, shared by
several flow runs) or on a local cluster of `runtime.dask_workers` processes started for the run
and closed after it. Only where tasks run changes, never what they produce (tested).
"""

from __future__ import annotations

import logging

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from loretune.config import RuntimeConfig


def task_runner(runtime: RuntimeConfig) -> TaskRunner:
    if runtime.task_runner == "thread":
        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner

    # distributed logs every connection at INFO, which would bury the flow's own log.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if runtime.dask_address:
        return DaskTaskRunner(address=runtime.dask_address)
    # One thread per worker process: the stages are CPU-bound Python (parsing, CLIP), which threads
    # would serialise on the GIL. No dashboard: its fixed port would clash between concurrent runs.
    return DaskTaskRunner(cluster_kwargs={"n_workers": runtime.dask_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})
