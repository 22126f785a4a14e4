"""`refresh`: the nightly data refresh (documents, images, features, dataset). Deployed as refresh/<domain>."""

from __future__ import annotations

from typing import Any

from prefect import flow

from loretune.flows.stages import prepare_data, publish_ledger, resolve_config, run_stage
from loretune.tasks.ingest import ingest_documents


@flow(name="refresh")
def refresh(config: str = "deployments/naruto.yaml", overrides: dict[str, Any] | None = None,
            sample_sources: str | None = None) -> dict[str, Any]:
    """Ask every source; on an unchanged night only the source checks do any work."""
    cfg = resolve_config(config, overrides, sample_sources)
    ledger: dict[str, dict[str, str]] = {}
    prepare_data(cfg, ledger, config)
    publish_ledger(f"{cfg.domain}-refresh", ledger, cfg.store_uri())
    return {"store": cfg.store_uri(), "stages": ledger}


@flow(name="ingest")
def ingest(config: str = "deployments/naruto.yaml", overrides: dict[str, Any] | None = None,
           sample_sources: str | None = None) -> dict[str, Any]:
    """The documents stage alone."""
    cfg = resolve_config(config, overrides, sample_sources)
    ledger: dict[str, dict[str, str]] = {}
    run_stage(ingest_documents, ledger, store=cfg.store_uri(), domain=cfg.domain, sources_cfg=cfg.sources, http_cfg=cfg.http)
    return {"store": cfg.store_uri(), "stages": ledger}
