"""`refresh`: the nightly data refresh (documents, images, features, dataset). Deployed as refresh/<domain>."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.events import emit_event

from loretune.flows.stages import prepare_data, publish_ledger, resolve_config, run_stage, with_runner
from loretune.tasks.ingest import ingest_documents

# What a refresh that published a new dataset says; finetune/<domain>'s deployment trigger
# (deployments/prefect.yaml) starts on it. A night with nothing new says nothing.
DATASET_EVENT = "loretune.dataset.published"


def dataset_resource(domain: str) -> str:
    return f"loretune.dataset.{domain}"


@flow(name="refresh")
def refresh(config: str = "deployments/naruto.yaml", overrides: dict[str, Any] | None = None,
            sample_sources: str | None = None,
            task_runner: Literal["thread", "dask"] | None = None) -> dict[str, Any]:
    """Ask every source; on an unchanged night only the source checks do any work."""
    cfg = resolve_config(config, with_runner(overrides, task_runner), sample_sources)
    ledger: dict[str, dict[str, str]] = {}
    prepare_data(cfg, ledger, config)
    publish_ledger(f"{cfg.domain}-refresh", ledger, cfg.store_uri())
    dataset = ledger["dataset"]
    if dataset["state"] == "Cached":
        get_run_logger().info("refresh: the dataset is unchanged (%s); no new model to train", dataset["version"])
    else:
        emit_event(event=DATASET_EVENT,
                   resource={"prefect.resource.id": dataset_resource(cfg.domain),
                             "prefect.resource.name": f"{cfg.domain} dataset", "loretune.version": dataset["version"]},
                   payload={"store": cfg.store_uri(), "stages": ledger})
        get_run_logger().info("refresh: new dataset %s; %s is emitted, which starts finetune/%s", dataset["version"],
                              DATASET_EVENT, cfg.domain)
    return {"store": cfg.store_uri(), "stages": ledger}


@flow(name="ingest")
def ingest(config: str = "deployments/naruto.yaml", overrides: dict[str, Any] | None = None,
           sample_sources: str | None = None) -> dict[str, Any]:
    """The documents stage alone."""
    cfg = resolve_config(config, overrides, sample_sources)
    ledger: dict[str, dict[str, str]] = {}
    run_stage(ingest_documents, ledger, store=cfg.store_uri(), domain=cfg.domain, sources_cfg=cfg.sources, http_cfg=cfg.http)
    return {"store": cfg.store_uri(), "stages": ledger}
