"""The documents stage: ask every source, publish a new version only if the content changed.

Ingest cannot know whether a source changed without asking it, so this task is never cached. Its
version is the corpus content hash, so an unchanged night publishes nothing and every downstream
stage keys on the same version and is a cache hit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from loretune.config import HttpConfig, SourcesConfig
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
    docs, reports = sources.collect(sources_cfg, http_cfg, log=logger.info,
                                    previous=lambda: _latest_documents(artifacts))
    summaries = {name: {k: v for k, v in dataclasses.asdict(r).items() if k != "stats"} for name, r in reports.items()}
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


def _latest_documents(artifacts: ArtifactStore) -> list[documents.Document]:
    """The newest stored corpus: what a failed source's documents are carried forward from."""
    versions = artifacts.versions(STAGE)
    if not versions:
        return []
    return documents.read_documents(artifacts.local_path(STAGE, versions[-1]["version"]) / "documents.parquet")
