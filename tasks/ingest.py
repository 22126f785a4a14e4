"""The documents stage: ask every source, publish a new version only if the content changed.

Ingest cannot know whether a source changed without asking it, so this task is never cached. Its
version is a hash of the domain and the corpus content, so an unchanged night publishes nothing and
every downstream stage keys on the same version and is a cache hit.

The domain is in the version and in the manifest because one store may hold several domains: a
domain resumes from, and carries failed sources forward from, its own newest version only, and two
domains that happen to gather the same corpus still get a version (and manifest) each.
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
from loretune.fingerprint import canonical, digest, stage_code_version
from loretune.ingest import documents, sources
from loretune.store import ArtifactRef, ArtifactStore
from loretune.tasks.fanout import fan_out
from loretune.tasks.stage import announce, run_provenance

STAGE = "documents"
CODE = stage_code_version(__name__)


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_documents(store: str, domain: str, sources_cfg: SourcesConfig, http_cfg: HttpConfig) -> ArtifactRef:
    logger = get_run_logger()
    artifacts = ArtifactStore(store)
    runners = {**sources.RUNNERS,
               "reddit": partial(sources.RUNNERS["reddit"], env=_reddit_env(sources_cfg.reddit.credentials_block))}
    docs, reports = sources.collect(sources.settings(sources_cfg.model_dump()), http_cfg.model_dump(), log=logger.info,
                                    previous=lambda: _latest(artifacts, domain),
                                    runners=runners, cache_dir=state_dir() / "http-cache", fan_out=fan_out)
    summaries = {name: {k: v for k, v in dataclasses.asdict(r).items() if k not in ("stats", "state", "scope")}
                 for name, r in reports.items()}
    create_table_artifact(key=f"{domain}-sources", table=[{"source": n, **row} for n, row in summaries.items()],
                          description="what each source returned in this run")
    failed = {name: row for name, row in summaries.items() if row["status"] == "failed"}
    kept = [name for name, row in failed.items() if not row["not_carried"]]
    lost = [f"{name} ({row['not_carried']})" for name, row in failed.items() if row["not_carried"]]
    if kept:
        logger.warning("sources failed and kept their documents from the previous version: %s "
                       "(see the %s-sources artifact)", ", ".join(kept), domain)
    if lost:
        logger.warning("sources failed with nothing to carry forward: %s", "; ".join(lost))

    version = digest({"stage": STAGE, "domain": domain, "corpus": documents.corpus_hash(docs)})
    if artifacts.exists(STAGE, version):
        logger.info("documents unchanged (%s documents, version %s); nothing published", len(docs), version)
        return artifacts.ref(STAGE, version)

    def build(out: Path) -> dict:
        documents.write_documents(docs, out / "documents.parquet")
        return {"documents": len(docs), **{f"{name}_documents": r.documents for name, r in reports.items()}}

    manifest = artifacts.publish(STAGE, version, build, manifest_fields={
        "domain": domain,
        "inputs": {},
        "parameters": canonical({"sources": sources_cfg}),
        "code_version": CODE,
        "sources": {name: dataclasses.asdict(r) for name, r in reports.items()},
        **run_provenance(),
    })
    if manifest.get("flow_run_id") != run_provenance()["flow_run_id"]:  # another run published it while this one waited
        logger.info("documents %s is already in the store, published by flow run %s meanwhile; nothing published",
                    version, manifest.get("flow_run_id"))
        return artifacts.ref(STAGE, version)
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


def _latest(artifacts: ArtifactStore, domain: str) -> sources.Stored:
    """The newest stored corpus of `domain`: where incremental sources resume, and what a failed
    source's documents are carried forward from (each source's only if its scope still matches).

    Versions of other domains are never used, nor ones from before manifests recorded their domain:
    nothing says which domain those were, and a wrong guess would put one fandom's pages in another's
    corpus. (Their sources' scopes are not recorded either.)
    """
    versions = artifacts.versions(STAGE)
    mine = [m for m in versions if m.get("domain") == domain]
    if not mine:
        others = len(versions) - len(mine)
        return sources.Stored(absent=f"no stored documents version of domain {domain!r}" + (
            f" ({others} of other domains, or recording no domain, are never used)" if others else ""))
    manifest = mine[-1]
    reports = manifest.get("sources", {})
    return sources.Stored(
        states={name: report.get("state") or {} for name, report in reports.items()},
        read=lambda: documents.read_documents(artifacts.local_path(STAGE, manifest["version"]) / "documents.parquet"),
        scopes={name: report.get("scope") for name, report in reports.items()},
        version=manifest["version"],
    )
