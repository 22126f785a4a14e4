"""The documents stage: ask every source, publish a new version only if the content changed.

Ingest cannot know whether a source changed without asking it, so this task is never cached. Its
version is the corpus content hash, so an unchanged night publishes nothing and every downstream
stage keys on the same version and is a cache hit.
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE

from loretune.config import HttpConfig, SourcesConfig, state_dir
from loretune.fingerprint import canonical, code_version, digest
from loretune.ingest import documents, fandom, http, reddit, sources, sportskeeda, wikitext, youtube
from loretune.store import ArtifactRef, ArtifactStore
from loretune.tasks.stage import announce, run_provenance

STAGE = "documents"
CODE = code_version(documents, fandom, http, reddit, sources, sportskeeda, wikitext, youtube)


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_documents(store: str, domain: str, sources_cfg: SourcesConfig, http_cfg: HttpConfig) -> ArtifactRef:
    logger = get_run_logger()
    artifacts = ArtifactStore(store)
    runners = {**sources.RUNNERS,
               "reddit": partial(sources.RUNNERS["reddit"], env=_reddit_env(sources_cfg.reddit.credentials_block))}
    docs, reports = sources.collect(sources_cfg, http_cfg, log=logger.info, previous=lambda: _latest(artifacts),
                                    runners=runners, cache_dir=state_dir() / "http-cache")
    summaries = {name: {k: v for k, v in dataclasses.asdict(r).items() if k not in ("stats", "state")}
                 for name, r in reports.items()}
    create_table_artifact(key=f"{domain}-sources", table=[{"source": n, **row} for n, row in summaries.items()],
                          description="what each source returned in this run")
    failed = [name for name, row in summaries.items() if row["status"] == "failed"]
    if failed:
        logger.warning("sources failed and kept their documents from the previous version: %s "
                       "(see the %s-sources artifact)", ", ".join(failed), domain)

    version = digest({"stage": STAGE, "corpus": documents.corpus_hash(docs)})
    if artifacts.exists(STAGE, version):
        logger.info("documents unchanged (%s documents, version %s); nothing published", len(docs), version)
        return artifacts.ref(STAGE, version)

    def build(out: Path) -> dict:
        documents.write_documents(docs, out / "documents.parquet")
        return {"documents": len(docs), **{f"{name}_documents": r.documents for name, r in reports.items()}}

    manifest = artifacts.publish(STAGE, version, build, manifest_fields={
        "inputs": {},
        "parameters": canonical({"sources": sources_cfg}),
        "code_version": CODE,
        "sources": {name: dataclasses.asdict(r) for name, r in reports.items()},
        **run_provenance(),
    })
    logger.info("published documents %s: %s documents", version, len(docs))
    announce(domain, manifest)
    return artifacts.ref(STAGE, version)


def _reddit_env(block: str | None) -> Callable[[], Mapping[str, str]]:
    """The environment, or, when it holds no Reddit app id and a block is named, the environment plus
    the credentials in that Prefect Secret block. Read only when Reddit runs."""

    def load() -> Mapping[str, str]:
        if os.environ.get("REDDIT_CLIENT_ID") or not block:
            return os.environ
        try:
            value = Secret.load(block).get()
        except ValueError as exc:  # Prefect's "Unable to find block document named ..."
            raise RuntimeError(f"Prefect Secret block {block!r} (sources.reddit.credentials_block) "
                               f"could not be loaded: {exc}") from None
        if not isinstance(value, dict) or not value.get("client_id") or not value.get("client_secret"):
            raise ValueError(f"Prefect Secret block {block!r} must hold a JSON object with client_id and "
                             "client_secret (and optionally user_agent)")
        found = {"REDDIT_CLIENT_ID": value["client_id"], "REDDIT_CLIENT_SECRET": value["client_secret"]}
        if value.get("user_agent"):
            found["REDDIT_USER_AGENT"] = value["user_agent"]
        return {**os.environ, **found}

    return load


def _latest(artifacts: ArtifactStore) -> sources.Stored:
    """The newest stored corpus: where incremental sources resume, and what a failed source's
    documents are carried forward from."""
    versions = artifacts.versions(STAGE)
    if not versions:
        return sources.Stored()
    manifest = versions[-1]
    states = {name: report.get("state") or {} for name, report in manifest.get("sources", {}).items()}
    return sources.Stored(states, lambda: documents.read_documents(
        artifacts.local_path(STAGE, manifest["version"]) / "documents.parquet"))
