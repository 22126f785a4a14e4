"""How flows call stages: config resolution and a stage call that reports Cached or not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from loretune.config import LoretuneConfig, load_config
from loretune.dataset import mix
from loretune.dataset.evalsets import BUILTIN_SETS, EvalSetError, UserSet, user_sets
from loretune.dataset.opensets import OPEN_SETS, user_open_sets
from loretune.evaluation.open_questions import PROBES
from loretune.flows.runners import task_runner
from loretune.model.base_models import describe_source
from loretune.samples.server import sample_overrides
from loretune.store import ArtifactRef
from loretune.tasks.credentials import load_store_credentials
from loretune.tasks.dataset import build_dataset
from loretune.tasks.features import extract_features
from loretune.tasks.images import fetch_images
from loretune.tasks.ingest import ingest_documents
from loretune.tasks.results import with_result_storage

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve_config(config: str, overrides: dict[str, Any] | None, sample_sources: str | None) -> LoretuneConfig:
    """The domain config with the sample sources (if asked for) and then the caller's overrides on top;
    the store's credentials from their Secret block, where the config names one and the environment
    has none (tasks/credentials.py)."""
    path = _config_path(config)
    merged = {**(sample_overrides(sample_sources.rstrip("/")) if sample_sources else {}), **(overrides or {})}
    cfg = load_config(path, merged)
    load_store_credentials(cfg.store_credentials_block)
    return cfg


def with_runner(overrides: dict[str, Any] | None, task_runner: str | None) -> dict[str, Any] | None:
    """A flow's `task_runner` parameter as the override it is: it wins over the config's runtime."""
    return {**(overrides or {}), "runtime.task_runner": task_runner} if task_runner else overrides


@dataclass(frozen=True)
class Preflight:
    user_sets: list[UserSet]
    open_user_sets: list[UserSet]
    model_source: dict[str, Any]


def preflight(config: str, cfg: LoretuneConfig) -> Preflight:
    """What finetune checks before any work: the user's evaluation sets, binary and open (validated
    and hashed; relative paths may sit beside the config), that every open set the gate checks
    exists, and the base model (pinned, or a clear error)."""
    folder = _config_path(config).parent
    binary = user_sets(cfg.evaluation.sets, relative_to=folder)
    spoken = user_open_sets(cfg.evaluation.open_sets, taken=[*BUILTIN_SETS, *(s.name for s in binary), PROBES],
                            relative_to=folder)
    known = [*OPEN_SETS, *(s.name for s in spoken)]
    for check in cfg.evaluation.promote.open:
        if check.set not in known:
            raise EvalSetError(f"evaluation.promote.open: no open set named {check.set!r} (known: {', '.join(known)}); "
                               "add its file to evaluation.open_sets or remove the check")
    return Preflight(binary, spoken, describe_source(cfg.model.base, cfg.model.revision))


def _config_path(config: str) -> Path:
    path = Path(config)
    return PROJECT_ROOT / path if not path.exists() and (PROJECT_ROOT / path).exists() else path


def run_stage(task: Any, ledger: dict[str, dict[str, str]], **kwargs: Any) -> ArtifactRef:
    """Run a stage task, noting its version and final state (Completed / Cached) in `ledger`.
    With a remote store, cached stages keep Prefect's results beside it (tasks/results.py)."""
    state = _on_runner(with_result_storage(task, kwargs.get("store")), kwargs)
    ref = state.result()
    ledger[ref.stage] = {"version": ref.version, "state": state.name}
    return ref


def _on_runner(task: Any, kwargs: dict[str, Any]) -> Any:
    """The task's final state. Called directly, a task runs in the flow's own process whatever its
    runner; only a submitted one goes to the runner (a Dask worker). The thread runner keeps the
    direct call, the one path every test has covered."""
    if isinstance(FlowRunContext.get().task_runner, ThreadPoolTaskRunner):
        return task(**kwargs, return_state=True)
    future = task.submit(**kwargs)
    future.wait()
    return future.state


def mix_sources(cfg: LoretuneConfig, config: str) -> list[dict[str, Any]]:
    """dataset.mix with each file found (relative to the config's folder) and hashed; a missing or
    unreadable one fails here, before any work."""
    folder = _config_path(config).parent
    return [{**mix.describe(s.path, relative_to=folder), **s.model_dump(exclude={"path"})} for s in cfg.dataset.mix]


def prepare_data(cfg: LoretuneConfig, ledger: dict[str, dict[str, str]],
                 config: str = "deployments/naruto.yaml") -> dict[str, ArtifactRef]:
    """documents -> images -> features -> dataset: the part the nightly refresh keeps current.

    On `runtime.task_runner: dask` they run as the `data` subflow on a Dask cluster, where ingest
    spreads its sources, and images and features their batches, across the workers (tasks/fanout.py).
    """
    if cfg.runtime.task_runner == "thread":
        return _data_stages(cfg, ledger, config)
    refs, found = data.with_options(task_runner=task_runner(cfg.runtime))(cfg=cfg, config=config)
    ledger.update(found)
    return refs


@flow(name="data")
def data(cfg: LoretuneConfig, config: str) -> tuple[dict[str, ArtifactRef], dict[str, dict[str, str]]]:
    """The data stages on the task runner `prepare_data` chose: their refs and ledger entries."""
    ledger: dict[str, dict[str, str]] = {}
    return _data_stages(cfg, ledger, config), ledger


def _data_stages(cfg: LoretuneConfig, ledger: dict[str, dict[str, str]], config: str) -> dict[str, ArtifactRef]:
    mixed = mix_sources(cfg, config)
    common = dict(store=cfg.store_uri(), domain=cfg.domain)
    documents = run_stage(ingest_documents, ledger, **common, sources_cfg=cfg.sources, http_cfg=cfg.http)
    images = run_stage(fetch_images, ledger, **common, documents=documents, params=cfg.images, http_cfg=cfg.http)
    features = run_stage(extract_features, ledger, **common, images_ref=images, params=cfg.features)
    dataset = run_stage(build_dataset, ledger, **common, documents=documents, images_ref=images, params=cfg.dataset,
                      mix_sources=mixed)
    return {"documents": documents, "images": images, "features": features, "dataset": dataset}


def publish_ledger(key: str, ledger: dict[str, dict[str, str]], store: str) -> None:
    """This run's stage versions and states, as a table `loretune report` reads back."""
    rows = [{"stage": stage, "version": v["version"], "state": v["state"], "store": store} for stage, v in ledger.items()]
    create_table_artifact(key=key, table=rows, description="stage versions of this flow run (Cached = no work done)")


def read_ledger(flow_run_id: str) -> list[dict[str, str]]:
    """The stage table a flow run published, from the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def fetch() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["table"])))

    for artifact in run_coro_as_sync(fetch()):
        rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        if rows and isinstance(rows, list) and {"stage", "version", "store"} <= set(rows[0]):
            return rows
    return []
