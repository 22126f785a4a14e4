"""What makes a Prefect task a versioned, cached stage.

`StageCache` keys a task on the stage's fingerprint (input versions + parameters + code), never on
the run id, so a re-run with nothing changed is a cache hit and shows as Cached in the UI. The
key it returns is the one recorded in the artifact's manifest, which ties Prefect's cache record to
the artifact on disk: if the artifact folder is gone, no manifest, so the key is a fresh one, a
guaranteed miss, and the stage is recomputed rather than trusted from Prefect's cache.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.runtime import flow_run
from prefect.transactions import get_transaction

from loretune.fingerprint import canonical, stage_version
from loretune.store import ArtifactRef, ArtifactStore

# Parameters that change how a stage talks to the world, not what it produces.
OPERATIONAL = {"store", "http_cfg"}


@dataclass
class StageCache(CachePolicy):
    stage: str = ""
    code: str = ""

    def fingerprinted(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in inputs.items() if k not in OPERATIONAL}

    def version(self, inputs: dict[str, Any]) -> str:
        return stage_version(self.stage, self.code, self.fingerprinted(inputs))

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        version = self.version(inputs)
        manifest = ArtifactStore(inputs["store"]).manifest(self.stage, version)
        if manifest is None:
            return f"{self.stage}-{version}-{uuid.uuid4().hex}"
        return manifest.get("cache_key") or f"{self.stage}-{version}"


def stage_inputs() -> dict[str, Any]:
    """The running task's parameters: exactly what `StageCache.compute_key` fingerprinted."""
    return dict(TaskRunContext.get().parameters)


def publish_stage(
    policy: StageCache,
    build: Callable[[Path], dict[str, Any] | None],
    announce_manifest: bool = True,
) -> ArtifactRef:
    """Build the stage into the store unless its version is already there; announce it in the UI.

    Stages whose own report is the better artifact under the stage's key pass
    `announce_manifest=False` and publish that instead.
    """
    logger = get_run_logger()
    inputs = stage_inputs()
    store = ArtifactStore(inputs["store"])
    version = policy.version(inputs)
    if store.exists(policy.stage, version):
        logger.info("%s %s is already in the store; nothing to do", policy.stage, version)
        return store.ref(policy.stage, version)
    fingerprinted = policy.fingerprinted(inputs)
    manifest = store.publish(
        policy.stage,
        version,
        build,
        manifest_fields={
            "inputs": {k: v.fingerprint_token() for k, v in fingerprinted.items() if isinstance(v, ArtifactRef)},
            "parameters": canonical({k: v for k, v in fingerprinted.items() if not isinstance(v, ArtifactRef)}),
            "code_version": policy.code,
            **run_provenance(),
        },
    )
    logger.info("published %s %s (%s)", policy.stage, version, _counts(manifest))
    if announce_manifest:
        announce(inputs["domain"], manifest)
    return store.ref(policy.stage, version)


def run_provenance() -> dict[str, Any]:
    transaction = get_transaction()
    return {"flow_run_id": flow_run.id, "cache_key": transaction.key if transaction else None}


def announce(domain: str, manifest: dict[str, Any], extra_markdown: str = "") -> None:
    """A Prefect artifact under a stable key per stage, so the UI lists each stage's versions."""
    stage = manifest["stage"]
    rows = [
        f"| version | `{manifest['version']}` |",
        f"| created | {manifest['created_at']} |",
        f"| counts | {_counts(manifest)} |",
        f"| inputs | {', '.join(f'`{v}`' for v in manifest.get('inputs', {}).values()) or '-'} |",
        f"| code | `{manifest.get('code_version')}` |",
        f"| content hash | `{manifest['content_hash'][:16]}` |",
    ]
    markdown = f"### {domain} {stage}\n\n| | |\n|---|---|\n" + "\n".join(rows) + "\n" + extra_markdown
    create_markdown_artifact(key=f"{domain}-{stage}", markdown=markdown,
                             description=f"{stage} {manifest['version']}")


def announce_png(key: str, png: Path, alt: str, description: str) -> None:
    """A plot as a markdown artifact (the PNG inlined), so the UI shows it under a stable key."""
    data = base64.b64encode(png.read_bytes()).decode()
    create_markdown_artifact(key=key, markdown=f"![{alt}](data:image/png;base64,{data})", description=description)


def _counts(manifest: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in manifest.get("counts", {}).items())
