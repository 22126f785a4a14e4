"""Several `finetune` runs for one comparison (sweep points, base models): one after another, or on Dask.

On the thread runner each point is a `finetune` subflow run of the calling flow, in order. On
`runtime.task_runner: dask` each point is a `point` task on the cluster that runs the same subflow
there, so points train side by side on different workers. Training tasks still carry the `gpu` tag,
so where the Prefect server limits that tag (the stack sets one slot), points that need the GPU
take turns and only their other stages overlap. Inside a point everything runs on threads: a point
is already one worker's work, and a Dask worker cannot start a cluster of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from loretune.config import RuntimeConfig
from loretune.flows.finetune import finetune
from loretune.flows.runners import task_runner


@dataclass(frozen=True)
class Outcome:
    """One point's finetune result, or why it has none, and its wall time."""

    name: str
    result: dict[str, Any] | None
    error: str | None
    seconds: float


def run_points(runtime: RuntimeConfig, config: str, sample_sources: str | None,
               points: list[tuple[str, dict[str, Any]]]) -> list[Outcome]:
    """Each (run name, overrides) as a finetune run; outcomes in the order of `points`."""
    if runtime.task_runner == "thread":
        return [_finetune(config, overrides, sample_sources, name) for name, overrides in points]
    return points_on_cluster.with_options(task_runner=task_runner(runtime))(
        config=config, sample_sources=sample_sources, points=points)


@flow(name="points")
def points_on_cluster(config: str, sample_sources: str | None,
                      points: list[tuple[str, dict[str, Any]]]) -> list[Outcome]:
    futures = [point.submit(config, overrides, sample_sources, name) for name, overrides in points]
    return [f.result() for f in futures]


# No Prefect cache: finetune's stages are the cache, each keyed on its own inputs.
@task(name="point", cache_policy=NO_CACHE)
def point(config: str, overrides: dict[str, Any], sample_sources: str | None, name: str) -> Outcome:
    return _finetune(config, {**overrides, "runtime.task_runner": "thread"}, sample_sources, name)


def _finetune(config: str, overrides: dict[str, Any], sample_sources: str | None, name: str) -> Outcome:
    started = time.monotonic()
    try:
        state = finetune.with_options(flow_run_name=name)(config=config, overrides=overrides,
                                                          sample_sources=sample_sources, return_state=True)
        if state.is_failed() or state.is_crashed():
            raise RuntimeError(state.message or f"finetune ended {state.name}")
        return Outcome(name, state.result(), None, time.monotonic() - started)
    except Exception as exc:  # this point's failure is its outcome, not the comparison's end
        return Outcome(name, None, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
