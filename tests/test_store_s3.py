"""The store and Prefect's results on S3: moto_server on loopback, started here, stands in for it.

Store level: publish, read, list and download on s3://; a failed build leaves nothing; two
publishers of one version leave one good version; a reader never sees a manifest whose data is
missing. Flow level: a stage cached on one machine is Cached on another (a fresh LORETUNE_HOME
and Prefect local storage, the same store and Prefect API), and no secret reaches a manifest, a
Prefect result or a log. The slow test runs the tiny-model finetune end to end both ways.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import fsspec
import pytest
from conftest import free_port

from loretune.store import DATA_PREFIX, MANIFEST, ArtifactStore, StoreURIError, content_hash

BUCKET = "loretune-test"
SECRET = f"moto-secret-{uuid.uuid4().hex}"  # moto takes any credentials; this one must never be written


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto_server on a free loopback port, the AWS variables pointing at it, one bucket."""
    import s3fs

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(endpoint, timeout=1).close()
                    break
                except urllib.error.HTTPError:
                    break  # it answers
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                    time.sleep(0.2)
            for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                                "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                                "AWS_EC2_METADATA_DISABLED": "true"}.items():
                mp.setenv(name, value)
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
                mp.delenv(name, raising=False)
            s3fs.S3FileSystem.clear_instance_cache()  # none made before these variables
            fsspec.filesystem("s3").mkdir(BUCKET)
            yield endpoint
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.terminate()
            server.wait(timeout=30)


@pytest.fixture
def s3_root(s3_endpoint, tmp_path, monkeypatch) -> str:
    """A fresh prefix in the bucket per test, and a machine-local cache of the test's own."""
    monkeypatch.setenv("LORETUNE_CACHE", str(tmp_path / "cache"))
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/store"


def writer(files: dict[str, str], summary: dict | None = None, before=None):
    def build(out: Path):
        for rel, text in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(text)
        if before:
            before()
        return summary

    return build


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def objects(root: str) -> list[str]:
    """Every object under a store root, relative to it."""
    fs, base = fsspec.core.url_to_fs(root, use_listings_cache=False)
    base = base.rstrip("/")
    return sorted(p[len(base) + 1:] for p in fs.find(base))


# --- the store on S3 --------------------------------------------------------------------------

def test_publish_read_list_and_download(s3_root, tmp_path, monkeypatch):
    store = ArtifactStore(s3_root)
    assert not store.is_local and store.stages() == [] and store.versions("dataset") == []
    manifest = store.publish("dataset", "v1", writer({"data.txt": "hello", "sub/rows.jsonl": "r1\n"}, {"rows": 1}),
                             {"code_version": "c"})

    prefix = manifest[DATA_PREFIX]
    assert prefix.startswith("attempt-")
    assert objects(s3_root) == sorted([f"dataset/v1/{MANIFEST}", f"dataset/v1/{prefix}/data.txt",
                                       f"dataset/v1/{prefix}/sub/rows.jsonl"])
    assert store.manifest("dataset", "v1") == manifest and store.exists("dataset", "v1")
    assert store.stages() == ["dataset"]
    assert [m["version"] for m in store.versions("dataset")] == ["v1"]
    assert manifest["counts"] == {"rows": 1, "files": 2, "bytes": len("hello") + len("r1\n")}

    # The publishing machine kept its build as its cached copy.
    local = store.local_path("dataset", "v1")
    assert local.is_relative_to(tmp_path / "cache")
    assert tree(local) == {"data.txt": "hello", "sub/rows.jsonl": "r1\n", MANIFEST: (local / MANIFEST).read_text()}
    assert json.loads((local / MANIFEST).read_text()) == manifest
    assert content_hash(local) == manifest["content_hash"]

    # Another machine (another cache) downloads exactly the named prefix, complete, once.
    monkeypatch.setenv("LORETUNE_CACHE", str(tmp_path / "other-machine"))
    other = store.local_path("dataset", "v1")
    assert other.is_relative_to(tmp_path / "other-machine") and tree(other) == tree(local)
    assert store.ref("dataset", "v1").local_path() == other
    assert sorted(p.name for p in other.parent.iterdir()) == ["v1"]  # no partial folders left


def test_remote_cache_defaults_to_the_state_folder(s3_root, tmp_path, monkeypatch):
    monkeypatch.delenv("LORETUNE_CACHE")
    monkeypatch.setenv("LORETUNE_HOME", str(tmp_path / "home"))
    store = ArtifactStore(s3_root)
    store.publish("s", "v", writer({"a": "x"}), {})
    assert store.local_path("s", "v").is_relative_to(tmp_path / "home" / "remote-cache")
    assert list((tmp_path / "home" / "remote-cache" / ".scratch").iterdir()) == []


def test_failed_build_leaves_nothing(s3_root, tmp_path):
    store = ArtifactStore(s3_root)
    store.publish("s", "v0", writer({"keep": "old"}), {})
    before = objects(s3_root)

    def build(out: Path):
        (out / "half.txt").write_text("partial")
        raise RuntimeError("stage crashed")

    with pytest.raises(RuntimeError, match="stage crashed"):
        store.publish("s", "v1", build, {})
    assert objects(s3_root) == before and not store.exists("s", "v1")
    assert list((tmp_path / "cache" / ".scratch").iterdir()) == []


def test_failed_upload_removes_its_attempt_prefix(s3_root, monkeypatch):
    store = ArtifactStore(s3_root)
    monkeypatch.setattr(store.fs, "pipe_file", lambda *a, **k: (_ for _ in ()).throw(OSError("connection reset")))
    with pytest.raises(OSError, match="connection reset"):
        store.publish("s", "v", writer({"a": "x", "b": "y"}), {})
    assert objects(s3_root) == []


def test_a_publisher_that_lost_the_race_removes_its_upload_and_returns_the_winner(s3_root, monkeypatch):
    """Deterministic: the loser checked for the version before the winner committed, so it uploads,
    and its conditional manifest write is refused (S3 If-None-Match: *, HTTP 412)."""
    store = ArtifactStore(s3_root)
    first = store.publish("s", "v", writer({"a.txt": "first"}), {"run": 1})
    monkeypatch.setattr(store, "exists", lambda stage, version: False)
    uploaded = []
    put = store.fs.put
    monkeypatch.setattr(store.fs, "put",
                        lambda lpaths, rpaths, **k: (uploaded.extend(rpaths), put(lpaths, rpaths, **k)))

    second = store.publish("s", "v", writer({"a.txt": "second!", "b.txt": "x"}), {"run": 2})

    assert uploaded, "the loser did upload before its manifest write was refused"
    assert second == first == ArtifactStore(s3_root).manifest("s", "v")
    assert objects(s3_root) == sorted([f"s/v/{MANIFEST}", f"s/v/{first[DATA_PREFIX]}/a.txt"])


@pytest.mark.parametrize("round_", range(3))
def test_two_concurrent_publishers_leave_one_good_version(s3_root, tmp_path, round_):
    barrier = threading.Barrier(2)
    results, errors = {}, []

    def publisher(name: str, files: dict[str, str]):
        try:  # both builds finish, then both commit at once
            store = ArtifactStore(s3_root)
            results[name] = store.publish("s", "v", writer(files, before=lambda: barrier.wait(timeout=30)),
                                          {"writer": name})
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=("a", {f"part-{i}.txt": f"a{i}" * 50 for i in range(8)})),
               threading.Thread(target=publisher, args=("b", {f"part-{i}.txt": f"b{i}" * 70 for i in range(5)}))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors

    store = ArtifactStore(s3_root)
    stored = store.manifest("s", "v")
    assert results["a"] == results["b"] == stored, "both publishers return the one stored manifest"
    prefixes = {p.split("/")[2] for p in objects(s3_root) if p.count("/") >= 3}
    assert prefixes == {stored[DATA_PREFIX]}, "the loser's attempt prefix is removed"
    assert [m["version"] for m in store.versions("s")] == ["v"]
    folder = store.local_path("s", "v")
    assert content_hash(folder) == stored["content_hash"]
    assert stored["counts"]["files"] == len([p for p in folder.iterdir() if p.name != MANIFEST])
    assert stored["writer"] == ("a" if folder.joinpath("part-7.txt").exists() else "b")


def test_a_reader_never_sees_a_manifest_whose_data_is_missing(s3_root, tmp_path, monkeypatch):
    store = ArtifactStore(s3_root)
    seen, stop = [], threading.Event()

    def reader():
        reading = ArtifactStore(s3_root)
        while not stop.is_set():
            manifest = reading.manifest("s", "v")
            if manifest is None:
                seen.append("absent")
                time.sleep(0.01)
                continue
            fs, base = reading.fs, reading._path("s", "v", manifest[DATA_PREFIX])
            present = {p[len(base) + 1:] for p in fs.find(base)}
            seen.append("complete" if len(present) == manifest["counts"]["files"] else f"torn: {sorted(present)}")
            return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.2)
        store.publish("s", "v", writer({f"f{i:02d}.txt": str(i) * 1000 for i in range(40)}), {})
    finally:
        time.sleep(0.5)
        stop.set()
        thread.join(timeout=60)
    assert seen[-1] == "complete" and set(seen) <= {"absent", "complete"}, seen[-5:]
    assert "absent" in seen  # it did read while the publish was under way


def test_credentials_in_the_store_uri_are_refused_without_echoing_them():
    with pytest.raises(StoreURIError) as err:
        ArtifactStore(f"s3://AKIAEXAMPLE:{SECRET}@bucket/prefix")
    assert SECRET not in str(err.value) and "AWS_SECRET_ACCESS_KEY" in str(err.value)


# --- Prefect: Cached on another machine -------------------------------------------------------

def echo_stage():
    """A minimal cached stage, built like the project's: StageCache + publish_stage."""
    from prefect import task

    from loretune.tasks.stage import StageCache, publish_stage

    policy = StageCache(stage="echo", code="test-1")

    @task(name="echo", cache_policy=policy, persist_result=True)
    def echo(store: str, domain: str, text: str):
        def build(out: Path) -> dict:
            (out / "echo.txt").write_text(text)
            return {"chars": len(text)}

        return publish_stage(policy, build)

    return echo


def run_echo(store: str, text: str) -> tuple[dict, str]:
    from prefect import flow

    from loretune.flows.stages import run_stage

    echo = echo_stage()

    @flow(name="echo-flow")
    def echo_flow() -> dict:
        ledger = {}
        run_stage(echo, ledger, store=store, domain="test", text=text)
        return ledger

    state = echo_flow(return_state=True)
    return state.result()["echo"], str(state.state_details.flow_run_id)


def fresh_machine(monkeypatch, home: Path):
    """Everything machine-local fresh: LORETUNE_HOME (so the remote cache, HTTP and generation caches,
    training scratch), the model cache, and Prefect's local result storage."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    monkeypatch.setenv("LORETUNE_HOME", str(home))
    monkeypatch.delenv("LORETUNE_CACHE", raising=False)
    monkeypatch.setenv("LORETUNE_MODEL_CACHE", str(home / "model-cache"))
    return temporary_settings({PREFECT_LOCAL_STORAGE_PATH: home / "prefect-storage"})


def flow_run_logs(flow_run_id: str) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def fetch():
        async with get_client() as client:
            return await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])))

    return "\n".join(log.message for log in run_coro_as_sync(fetch()))


def everything_under(root: str) -> bytes:
    fs, base = fsspec.core.url_to_fs(root, use_listings_cache=False)
    return b"\n".join(fs.cat_file(p) for p in fs.find(base.rstrip("/")))


def test_a_stage_cached_on_one_machine_is_cached_on_another(prefect_server, s3_root, tmp_path, monkeypatch):
    with fresh_machine(monkeypatch, tmp_path / "machine-1"):
        first, run_1 = run_echo(s3_root, "hello")
    with fresh_machine(monkeypatch, tmp_path / "machine-1"):
        again, _ = run_echo(s3_root, "hello")
    with fresh_machine(monkeypatch, tmp_path / "machine-2"):
        other, run_2 = run_echo(s3_root, "hello")
        assert ArtifactStore(s3_root).local_path("echo", other["version"]).joinpath("echo.txt").read_text() == "hello"

    assert first["state"] == "Completed"
    assert again == other == {"version": first["version"], "state": "Cached"}
    assert any(p.startswith(".prefect-results/") for p in objects(s3_root)), "Prefect's records sit beside the store"
    assert ArtifactStore(s3_root).stages() == ["echo"]

    # No secret in anything stored (manifests, data, Prefect's records) nor in either run's logs.
    assert SECRET.encode() not in everything_under(s3_root)
    logs = flow_run_logs(run_1) + flow_run_logs(run_2)
    assert "echo" in logs and SECRET not in logs


def test_a_local_store_keeps_prefects_results_on_the_machine(prefect_server, tmp_path, monkeypatch):
    """The control: without shared result storage, another machine runs the stage (Completed)."""
    store = str(tmp_path / "store")
    with fresh_machine(monkeypatch, tmp_path / "machine-1"):
        first, _ = run_echo(store, "hi")
    with fresh_machine(monkeypatch, tmp_path / "machine-2"):
        other, _ = run_echo(store, "hi")
    assert first["state"] == other["state"] == "Completed" and other["version"] == first["version"]
    assert not (tmp_path / "store" / ".prefect-results").exists()


# --- the finetune flow end to end on S3 -------------------------------------------------------

@pytest.mark.slow
def test_finetune_on_s3_then_every_cached_stage_is_cached_on_a_second_machine(
        prefect_server, samples, s3_root, tmp_path, monkeypatch):
    from recipes import QUICK_OPEN, TINY

    from loretune.flows.finetune import finetune

    fast = {**TINY, **QUICK_OPEN, "training.max_steps": 4, "training.save_steps": 2, "evaluation.batch_size": 32,
            "evaluation.max_items": 200}

    def run() -> tuple[dict, str, float]:
        start = time.monotonic()
        state = finetune(config="deployments/naruto.yaml", overrides={"store": s3_root, **fast},
                         sample_sources=samples.base_url, return_state=True)
        return state.result(), str(state.state_details.flow_run_id), time.monotonic() - start

    with fresh_machine(monkeypatch, tmp_path / "machine-1"):
        cold, run_1, cold_s = run()
    with fresh_machine(monkeypatch, tmp_path / "machine-2"):
        warm, run_2, warm_s = run()
    print(f"\nS3 finetune: machine 1 (cold) {cold_s:.1f} s, machine 2 {warm_s:.1f} s; machine 2 states: "
          + ", ".join(f"{s} {v['state']}" for s, v in warm["stages"].items()))

    stages = ["documents", "images", "features", "dataset", "model", "checkpoints", "evaluation", "export"]
    assert list(cold["stages"]) == stages and {v["state"] for v in cold["stages"].values()} == {"Completed"}
    assert cold["store"] == s3_root
    store = ArtifactStore(s3_root)
    for stage, info in cold["stages"].items():
        manifest = store.manifest(stage, info["version"])
        assert manifest["stage"] == stage and manifest[DATA_PREFIX].startswith("attempt-")
    assert {s: v["version"] for s, v in warm["stages"].items()} == {s: v["version"] for s, v in cold["stages"].items()}
    # ingest is never cached (it must ask the sources): it runs, finds the same corpus, publishes nothing.
    assert warm["stages"]["documents"]["state"] == "Completed"
    assert [m["version"] for m in store.versions("documents")] == [cold["stages"]["documents"]["version"]]
    assert {s: v["state"] for s, v in warm["stages"].items() if s != "documents"} == {s: "Cached" for s in stages[1:]}
    assert warm["evaluation"] == cold["evaluation"] and warm["promotion"] == cold["promotion"]
    for stage in stages:
        assert len(store.versions(stage)) == 1, f"{stage}: the second machine published a version"
    # Machine 2 downloaded what it read into its own cache, not into machine 1's.
    assert (tmp_path / "machine-2" / "remote-cache").is_dir()

    assert SECRET.encode() not in everything_under(s3_root)
    logs = flow_run_logs(run_1) + flow_run_logs(run_2)
    assert "published" in logs and SECRET not in logs


def test_the_stores_credentials_can_come_from_a_prefect_secret_block(prefect_server, s3_root, monkeypatch, caplog):
    """Where the environment holds no key, the config's Secret block fills it, and nothing echoes it."""
    import s3fs
    from prefect.blocks.system import Secret

    from loretune.tasks.credentials import StoreCredentialsError, load_store_credentials

    Secret(value={"aws_access_key_id": "from-block", "aws_secret_access_key": SECRET}).save("lt-s3", overwrite=True)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert load_store_credentials(None) == []  # no block named: the environment (or a profile) as it is
    assert sorted(load_store_credentials("lt-s3")) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET
    s3fs.S3FileSystem.clear_instance_cache()
    manifest = ArtifactStore(s3_root).publish("echo", "v1", writer({"a.txt": "hello"}), manifest_fields={})
    assert manifest["counts"]["files"] == 1
    assert load_store_credentials("lt-s3") == []  # the environment's key wins from now on

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    Secret(value={"aws_access_key_id": "x", "aws_secret_access_key": SECRET, "colour": "red"}).save("lt-bad", overwrite=True)
    for block, says in (("lt-bad", "unknown keys colour"), ("lt-missing", "could not be loaded")):
        with pytest.raises(StoreCredentialsError, match=says) as caught:
            load_store_credentials(block)
        assert SECRET not in str(caught.value) and block in str(caught.value)
    assert SECRET not in caplog.text
