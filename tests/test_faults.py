"""Crashes and full disks: a run killed anywhere, or out of space, leaves the store consistent, and
the next run completes with the same versions as a run that was never interrupted.

The kill harness (slow) runs the tiny-model finetune in a process of its own (tests/flow_runner.py)
and SIGKILLs it at failpoints (loretune/failpoints.py). To stay affordable the kills are chained in
one store: each run is killed at a later point than the one before, so it first has to recover
from the previous kill (its stale scratch, its half-trained checkpoints, a version renamed into
place whose run never recorded it), and the last run, with no failpoint, must complete. After every
kill no version is visible without its manifest and every visible version is complete; at the end
the store holds the reference run's versions, no scratch, and no training scratch.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loretune.failpoints import ENV as FAILPOINTS
from loretune.store import MANIFEST, SCRATCH, ArtifactStore, StoreFull, content_hash

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# Stages whose content is a pure function of their inputs: an interrupted and resumed run must
# produce the very same bytes. (Documents are versioned by their corpus, but their parquet is not
# byte-identical between two uninterrupted runs either; training resumed from a checkpoint is not
# bit-identical on every machine: those are compared by version only.)
DETERMINISTIC = ("images", "features", "dataset")


# --- store level: ENOSPC and stale scratch (fast) ---------------------------------------------


def test_a_full_disk_fails_the_publish_clearly_and_leaves_the_store_as_it_was(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    store.publish("dataset", "v1", lambda out: (out / "data.bin").write_bytes(b"x" * 4096) and None, {})

    def fills_the_disk(out: Path) -> None:
        (out / "data.bin").write_bytes(b"y" * 10_000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "more.bin"))

    with pytest.raises(StoreFull) as failed:
        store.publish("dataset", "v2", fills_the_disk, {})
    message = str(failed.value)
    assert failed.value.errno == errno.ENOSPC
    assert str(tmp_path / "store") in message, "the message names the store"
    assert "dataset/v2" in message and "9.8 KiB" in message, "and what was written when it filled"
    assert "v1, takes 4.0 KiB" in message, "and what the stage's last version took"
    assert "free there now" in message
    assert not list((tmp_path / "store" / SCRATCH).iterdir()), "the scratch is removed"
    assert not (tmp_path / "store" / "dataset" / "v2").exists()
    assert (store.local_path("dataset", "v1") / "data.bin").read_bytes() == b"x" * 4096, "v1 stays readable"
    store.publish("dataset", "v2", lambda out: (out / "data.bin").write_bytes(b"z") and None, {})  # space again
    assert [m["version"] for m in store.versions("dataset")] == ["v1", "v2"]


def test_a_full_disk_at_the_manifest_write_is_caught_too(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "store")
    monkeypatch.setenv(FAILPOINTS, "publish:before-rename:dataset=enospc")
    with pytest.raises(StoreFull, match="no space left"):
        store.publish("dataset", "v1", lambda out: (out / "a").write_text("a") and None, {})
    monkeypatch.delenv(FAILPOINTS)
    assert store.versions("dataset") == [] and not list((tmp_path / "store" / SCRATCH).iterdir())
    store.publish("dataset", "v1", lambda out: (out / "a").write_text("a") and None, {})
    assert store.exists("dataset", "v1")


def test_a_publish_removes_the_scratch_of_dead_processes_only(tmp_path):
    import socket

    scratch = tmp_path / "store" / SCRATCH
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    mine = scratch / f"dataset-v0~{os.getpid()}~{host}~abc"  # this process: alive
    gone = scratch / f"dataset-v0~{int(dead.stdout)}~{host}~def"
    gone_cached = scratch / f"dataset-v0~{int(dead.stdout)}~{host}~ghi.cached"
    foreign = scratch / "dataset-v0~1~another-host~jkl"  # another machine's: cannot be checked, kept
    for folder in (mine, gone, gone_cached, foreign):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "f").write_text("half")
        (folder / "sub" / "f").chmod(0o444)
    ArtifactStore(tmp_path / "store").publish("dataset", "v1", lambda out: None, {})
    assert sorted(p.name for p in scratch.iterdir()) == sorted([mine.name, foreign.name])


def test_a_version_without_manifest_is_never_listed_and_is_replaced_by_a_complete_one(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    (tmp_path / "store" / "dataset" / "v1").mkdir(parents=True)  # what a non-atomic writer might leave
    assert store.versions("dataset") == [] and not store.exists("dataset", "v1")
    store.publish("dataset", "v1", lambda out: (out / "a").write_text("a") and None, {})
    assert (store.local_path("dataset", "v1") / MANIFEST).exists()


# --- the kill harness (slow) ---------------------------------------------------------------------

# (failpoint, what it interrupts). In stage order: each run gets past the previous kill first.
CHAIN = [
    ("ingest:between-sources", "documents: after the first source"),
    ("publish:before-rename:documents", "documents: data and manifest in scratch, not renamed"),
    ("images:between-fetches@2", "images: after the second fetch"),
    ("publish:after-rename:images", "images: renamed into place, run not yet told"),
    ("publish:before-rename:features=enospc", "features: ENOSPC at the manifest write (not a kill)"),
    ("build:features", "features: start of the build"),
    ("publish:before-rename:dataset", "dataset: before the rename"),
    ("publish:after-rename:model", "model: after the rename"),
    ("training:after-checkpoint", "checkpoints: right after checkpoint-2 is saved"),
    ("publish:before-rename:checkpoints", "checkpoints: trained, before the rename"),
    ("evaluation:between-checkpoints@2", "evaluation: after scoring the base and checkpoint-2"),
    ("build:evaluation", "evaluation: start of the build"),
    ("export:after-merge", "export: merged folder written"),
    ("publish:before-rename:export", "export: before the rename"),
    ("publish:after-rename:export", "export: after the rename"),
]


@pytest.fixture(scope="module")
def launch(prefect_server, samples):
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()

    def run(store: Path, home: Path, failpoints: str | None = None, flow: str = "finetune",
            timeout: float = 1200) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != FAILPOINTS}
        env.update(PREFECT_API_URL=api, LORETUNE_HOME=str(home), PYTHONPATH=str(TESTS))
        if failpoints:
            env[FAILPOINTS] = failpoints
        out = home / f"result-{time.monotonic_ns()}.json"
        args = {"flow": flow, "store": str(store), "samples": samples.base_url, "out": str(out)}
        process = subprocess.Popen([sys.executable, str(TESTS / "flow_runner.py"), json.dumps(args)], cwd=REPO,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        process.result_file = out  # type: ignore[attr-defined]
        return process

    return run


def finish(process: subprocess.Popen, timeout: float = 1200) -> tuple[int, str, dict | None]:
    output, _ = process.communicate(timeout=timeout)
    out = process.result_file  # type: ignore[attr-defined]
    return process.returncode, output, json.loads(out.read_text()) if out.exists() else None


def store_versions(store: Path) -> dict[str, list[str]]:
    artifacts = ArtifactStore(store)
    return {stage: [m["version"] for m in artifacts.versions(stage)] for stage in artifacts.stages()}


def check_consistent(store: Path) -> list[str]:
    """Every version folder a reader can see has its manifest, and its content matches it."""
    problems = []
    for stage_dir in (p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version in (p for p in stage_dir.iterdir() if not p.name.startswith(".")):
            manifest = version / MANIFEST
            if not manifest.exists():
                problems.append(f"{stage_dir.name}/{version.name}: no manifest")
            elif json.loads(manifest.read_text())["content_hash"] != content_hash(version):
                problems.append(f"{stage_dir.name}/{version.name}: content does not match its manifest")
    return problems


def scratch_left(store: Path, home: Path) -> list[str]:
    found = [f".scratch/{p.name}" for p in (store / SCRATCH).glob("*")]
    found += [f"work/{p.name}" for p in (home / "work").glob("checkpoints-*")]
    return found


@pytest.fixture(scope="module")
def reference(launch, tmp_path_factory):
    store, home = tmp_path_factory.mktemp("reference-store"), tmp_path_factory.mktemp("reference-home")
    started = time.monotonic()
    code, output, result = finish(launch(store, home))
    assert code == 0, output[-4000:]
    return {"store": store, "stages": result["stages"], "seconds": time.monotonic() - started}


@pytest.mark.slow
def test_a_finetune_killed_anywhere_completes_on_the_next_run_with_the_reference_versions(
        launch, reference, tmp_path_factory):
    store, home = tmp_path_factory.mktemp("killed-store"), tmp_path_factory.mktemp("killed-home")
    started, rows, tails = time.monotonic(), [], []
    for point, what in CHAIN:
        before = store_versions(store) if store.exists() else {}
        t0 = time.monotonic()
        code, output, _ = finish(launch(store, home, failpoints=point))
        problems = check_consistent(store)
        left = scratch_left(store, home)
        if point.endswith("=enospc"):
            expected = code == 1 and "no space left" in output and "Nothing was published" in output
            outcome = "failed: StoreFull" if expected else f"UNEXPECTED exit {code}"
        else:
            expected = code == -9
            outcome = "killed" if expected else f"NOT REACHED (exit {code})"
        if not expected:
            tails.append(f"{point}:\n{output[-3000:]}")
        recovered = {s: v for s, v in store_versions(store).items() if v != before.get(s)}
        rows.append({"point": point, "what": what, "outcome": outcome, "seconds": round(time.monotonic() - t0),
                     "scratch_after_kill": left, "problems": problems, "newly_published": sorted(recovered)})
    t0 = time.monotonic()
    code, output, result = finish(launch(store, home))
    rows.append({"point": "(none)", "what": "the last re-run", "outcome": "completed" if code == 0 else f"exit {code}",
                 "seconds": round(time.monotonic() - t0), "scratch_after_kill": scratch_left(store, home),
                 "problems": check_consistent(store), "newly_published": []})
    total = time.monotonic() - started
    report = {"rows": rows, "chain_seconds": round(total), "reference_seconds": round(reference["seconds"]),
              "versions": store_versions(store), "reference_versions": store_versions(reference["store"])}
    (Path(os.environ.get("LORETUNE_FAULTS_REPORT", str(home / "kill-table.json")))).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    assert code == 0, output[-4000:]
    assert not tails, "\n\n".join(tails)
    assert not any(r["problems"] for r in rows), "a reader could see a version without its manifest, or incomplete"

    held, ref = store_versions(store), store_versions(reference["store"])
    assert sorted(held) == sorted(ref) and all(len(v) == 1 for v in held.values()), held
    assert held == ref, "the killed-and-rerun store holds exactly the reference run's versions"
    for stage in DETERMINISTIC:
        version = reference["stages"][stage]["version"]
        assert (ArtifactStore(store).manifest(stage, version)["content_hash"]
                == ArtifactStore(reference["store"]).manifest(stage, version)["content_hash"]), stage
    assert not check_consistent(store)
    assert scratch_left(store, home) == [], "no store scratch and no training scratch after a completed run"
