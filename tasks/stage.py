"""What makes a Prefect task a versioned, cached stage.

`StageCache` keys a task on the stage's fingerprint (input versions + parameters + code), never on
the run id, so a re-run with nothing changed is a cache hit and shows as Cached in the UI. The
key it returns is the one recorded in the artifact's manifest, which ties Prefect's cache record to
the artifact on disk: if the artifact folder is gone, no manifest, so the key is a fresh one, a
guaranteed miss, and the stage is recomputed rather than trusted from Prefect's cache.

A stage can also say that a stored artifact is incomplete for reasons outside its inputs (images
that hit a timeout or a 503): such an artifact is never a cache hit. The next run tries again and,
if the retry settled anything, publishes it as the next *attempt*, a new immutable version of the
same inputs (`stage_version(..., attempt=n)`); the newest attempt is found by looking up attempt 0,
1, 2, ... in the store, so no mutable pointer is needed and the store stays write-once.

Two runs that need the same version at once build it once: `ArtifactStore.publish` holds a
per-version lock (an flock, dropped by the kernel if its holder dies) around "is it stored? else
build and publish", so the second run waits, then finds the first's artifact and returns it
("already in the store ... meanwhile"). Prefect's own transaction isolation (SERIALIZABLE with a
lock manager) is not used: it locks on the cache key, which for a version not yet stored is
deliberately unique per run (`compute_key`), and its file lock manager's lock outlives a killed
holder until a hold timeout, which would stall the re-run after a crash.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from functools import partial
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


class NothingNew(Exception):
    """Raised by a stage's retry build when the retry settled nothing: the stored version stands."""


@dataclass
class StageCache(CachePolicy):
    """A stage's cache policy and version.

    `http_fields`: the settings of the operational `http_cfg` that do decide what this stage
    produces (for images: the size cap, which hosts a redirect may reach, robots.txt, the redirect
    limit). They are fingerprinted, under `http_cfg`; the others (user agent, timeouts, retries,
    politeness interval) only change how the stage talks to servers and stay out of the version.

    `incomplete_while`: the name of a manifest count that, while above 0, marks the stored artifact
    as incomplete (images: `transient_failures`); see the module docstring.
    """

    stage: str = ""
    code: str = ""
    http_fields: tuple[str, ...] = ()
    incomplete_while: str = ""

    def fingerprinted(self, inputs: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in inputs.items() if k not in OPERATIONAL}
        if self.http_fields:
            if inputs.get("http_cfg") is None:
                raise TypeError(f"stage {self.stage!r} fingerprints http_cfg fields {list(self.http_fields)} "
                                "but its task was given no http_cfg")
            http_cfg = canonical(inputs["http_cfg"])
            missing = [f for f in self.http_fields if f not in http_cfg]
            if missing:
                raise ValueError(f"stage {self.stage!r}: http_cfg has no setting {', '.join(missing)}")
            kept["http_cfg"] = {f: http_cfg[f] for f in self.http_fields}
        return kept

    def version(self, inputs: dict[str, Any], attempt: int = 0) -> str:
        return stage_version(self.stage, self.code, self.fingerprinted(inputs), attempt)

    def is_incomplete(self, manifest: dict[str, Any]) -> bool:
        return bool(self.incomplete_while) and manifest.get("counts", {}).get(self.incomplete_while, 0) > 0

    def latest(self, store: ArtifactStore, inputs: dict[str, Any]) -> tuple[int, str, dict[str, Any] | None]:
        """The newest stored attempt for these inputs: (attempt, version, manifest or None if none).

        Attempt n+1 is published only when a retry of attempt n settled something, so the walk is a
        handful of manifest reads at most, bounded by the first attempt's transient failures.
        """
        attempt, version = 0, self.version(inputs)
        manifest = store.manifest(self.stage, version)
        while manifest is not None and self.is_incomplete(manifest):
            following = self.version(inputs, attempt + 1)
            found = store.manifest(self.stage, following)
            if found is None:
                break
            attempt, version, manifest = attempt + 1, following, found
        return attempt, version, manifest

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        _, version, manifest = self.latest(ArtifactStore(inputs["store"]), inputs)
        if manifest is None or self.is_incomplete(manifest):
            return f"{self.stage}-{version}-{uuid.uuid4().hex}"
        return manifest.get("cache_key") or f"{self.stage}-{version}"


def stage_inputs() -> dict[str, Any]:
    """The running task's parameters: exactly what `StageCache.compute_key` fingerprinted."""
    return dict(TaskRunContext.get().parameters)


def publish_stage(
    policy: StageCache,
    build: Callable[[Path], dict[str, Any] | None],
    announce_manifest: bool = True,
    retry: Callable[[Path, ArtifactRef], dict[str, Any] | None] | None = None,
) -> ArtifactRef:
    """Build the stage into the store unless its version is already there; announce it in the UI.

    Stages whose own report is the better artifact under the stage's key pass
    `announce_manifest=False` and publish that instead.

    For a policy with `incomplete_while`, an incomplete stored attempt is tried again with
    `retry(folder, previous)`, which builds the next attempt from `previous` or raises `NothingNew`,
    in which case nothing is published and `previous` is returned.
    """
    logger = get_run_logger()
    inputs = stage_inputs()
    store = ArtifactStore(inputs["store"])
    attempt, version, stored = policy.latest(store, inputs)
    make, previous, lineage = build, None, {}
    if stored is not None:
        if not policy.is_incomplete(stored):
            logger.info("%s %s is already in the store; nothing to do", policy.stage, version)
            return store.ref(policy.stage, version)
        if retry is None:
            raise TypeError(f"stage {policy.stage!r} marks artifacts incomplete ({policy.incomplete_while}) "
                            "but its task passes publish_stage no retry")
        previous = store.ref(policy.stage, version)
        attempt, version = attempt + 1, policy.version(inputs, attempt + 1)
        logger.info("%s %s is incomplete (%s %s); trying again, as %s if anything settles", policy.stage,
                    previous.version, stored["counts"][policy.incomplete_while], policy.incomplete_while, version)
        make, lineage = partial(retry, previous=previous), {"attempt": attempt, "retry_of": previous.fingerprint_token()}
    fingerprinted = policy.fingerprinted(inputs)
    try:
        manifest = store.publish(
            policy.stage,
            version,
            make,
            manifest_fields={
                "inputs": {k: v.fingerprint_token() for k, v in fingerprinted.items() if isinstance(v, ArtifactRef)},
                "parameters": canonical({k: v for k, v in fingerprinted.items() if not isinstance(v, ArtifactRef)}),
                "code_version": policy.code,
                **lineage,
                **run_provenance(),
            },
        )
    except NothingNew as exc:
        if previous is None:  # only a retry may decline to publish; a first build has nothing to fall back on
            raise
        logger.info("%s %s stands: %s", policy.stage, previous.version, exc)
        return previous
    if manifest.get("flow_run_id") != run_provenance()["flow_run_id"]:
        # Another run published this version while this one waited for its publish lock (store.py):
        # the work was done once, and its artifact stands.
        logger.info("%s %s is already in the store, published by flow run %s meanwhile; nothing to do",
                    policy.stage, version, manifest.get("flow_run_id"))
        return store.ref(policy.stage, version)
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
