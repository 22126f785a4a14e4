"""How flows call stages: config resolution and a stage call that reports Cached or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loretune.config import LoretuneConfig, load_config
from loretune.samples.server import sample_overrides
from loretune.store import ArtifactRef
from loretune.tasks.images import extract_features, fetch_images
from loretune.tasks.dataset import build_dataset
from loretune.tasks.ingest import ingest_documents

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve_config(config: str, overrides: dict[str, Any] | None, sample_sources: str | None) -> LoretuneConfig:
    """The domain config with the sample sources (if asked for) and then the caller's overrides on top."""
    path = Path(config)
    if not path.exists() and (PROJECT_ROOT / path).exists():
        path = PROJECT_ROOT / path
    merged = {**(sample_overrides(sample_sources.rstrip("/")) if sample_sources else {}), **(overrides or {})}
    return load_config(path, merged)


def run_stage(task: Any, ledger: dict[str, dict[str, str]], **kwargs: Any) -> ArtifactRef:
    """Run a stage task, noting its version and final state (Completed / Cached) in `ledger`."""
    state = task(**kwargs, return_state=True)
    ref = state.result()
    ledger[ref.stage] = {"version": ref.version, "state": state.name}
    return ref


def prepare_data(cfg: LoretuneConfig, ledger: dict[str, dict[str, str]]) -> dict[str, ArtifactRef]:
    """documents -> images -> features -> dataset: the part the nightly refresh keeps current."""
    common = dict(store=cfg.store_uri(), domain=cfg.domain)
    documents = run_stage(ingest_documents, ledger, **common, sources_cfg=cfg.sources, http_cfg=cfg.http)
    images = run_stage(fetch_images, ledger, **common, documents=documents, params=cfg.images, http_cfg=cfg.http)
    features = run_stage(extract_features, ledger, **common, images_ref=images, params=cfg.features)
    dataset = run_stage(build_dataset, ledger, **common, documents=documents, images_ref=images, params=cfg.dataset)
    return {"documents": documents, "images": images, "features": features, "dataset": dataset}


def ledger_markdown(domain: str, ledger: dict[str, dict[str, str]], store: str) -> str:
    rows = "\n".join(f"| {stage} | `{v['version']}` | {v['state']} |" for stage, v in ledger.items())
    return f"### {domain} run\n\nstore: `{store}`\n\n| stage | version | state |\n|---|---|---|\n{rows}\n"
