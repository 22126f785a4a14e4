"""Two runs on one store: a version needed by both at once is built once and published once.

`ArtifactStore.publish` holds a per-version flock around "stored? else build and publish", so the
second publisher waits and then returns the first's manifest (store.py, tasks/stage.py).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from test_faults import check_consistent, finish, launch, scratch_left, store_versions  # noqa: F401 (fixture)

from loretune.store import ArtifactStore, PublishLockTimeout

STAGES = ["documents", "images", "features", "dataset", "model", "checkpoints", "evaluation", "export"]


def test_two_publishers_of_one_version_build_it_once(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    builds, results = [], []
    started = threading.Event()

    def build(out: Path) -> dict:
        builds.append(threading.get_ident())
        started.set()
        time.sleep(0.5)  # long enough for the other thread to reach the lock
        (out / "data.txt").write_text("the one build")
        return {"rows": 1}

    def publish() -> None:
        results.append(store.publish("dataset", "v1", build, {"flow_run_id": str(threading.get_ident())}))

    first = threading.Thread(target=publish)
    first.start()
    started.wait(5)
    second = threading.Thread(target=publish)
    second.start()
    first.join(), second.join()
    assert len(builds) == 1, "the second publisher waited and reused the first's artifact"
    assert results[0] == results[1] and results[0]["flow_run_id"] == str(builds[0])
    assert [m["version"] for m in store.versions("dataset")] == ["v1"]
    assert not list((tmp_path / "store" / ".scratch").iterdir())


def test_a_publisher_waits_no_longer_than_the_lock_timeout(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    with store.lock("dataset", "v1"):
        waited = []

        def other() -> None:
            try:
                with store.lock("dataset", "v1", timeout=0.3):
                    waited.append("got it")
            except PublishLockTimeout as exc:
                waited.append(str(exc))

        t = threading.Thread(target=other)
        t.start(), t.join()
    assert "is being built by another run" in waited[0] and "LORETUNE_PUBLISH_LOCK_TIMEOUT" in waited[0]
    with store.lock("dataset", "v1", timeout=0.3):  # released: free again
        pass


@pytest.mark.slow
def test_two_finetunes_and_a_refresh_at_once_on_one_store_build_each_version_once(launch, tmp_path_factory):  # noqa: F811
    store, home = tmp_path_factory.mktemp("shared-store"), tmp_path_factory.mktemp("shared-home")
    started = time.monotonic()
    runs = [launch(store, home), launch(store, home), launch(store, home, flow="refresh")]
    finished = [finish(p) for p in runs]
    seconds = time.monotonic() - started
    for code, output, _ in finished:
        assert code == 0, output[-4000:]
    (a, out_a, res_a), (b, out_b, res_b), (_, out_r, res_r) = finished
    print(f"two finetunes and a refresh at once: {seconds:.0f} s")
    assert {s: v["version"] for s, v in res_a["stages"].items()} == {s: v["version"] for s, v in res_b["stages"].items()}
    for stage, info in res_r["stages"].items():
        assert info["version"] == res_a["stages"][stage]["version"], stage
    held = store_versions(store)
    assert sorted(held) == sorted(STAGES) and all(len(v) == 1 for v in held.values()), held  # one version each
    assert not check_consistent(store) and scratch_left(store, home) == []
    outputs = out_a + out_b + out_r
    run_ids = {res_a["flow_run_id"], res_b["flow_run_id"], res_r["flow_run_id"]}
    for stage in STAGES:
        built = len(re.findall(rf"published {stage} ", outputs))
        assert built == 1, f"{stage} was built {built} times"
        manifest = ArtifactStore(store).versions(stage)[0]
        assert manifest["flow_run_id"] in run_ids
    # The others waited and reused: a cache hit, or the publish lock's "meanwhile".
    reused = len(re.findall(r"is already in the store, published by flow run \S+ meanwhile", outputs))
    states = [v["state"] for res in (res_a, res_b, res_r) for v in res["stages"].values()]
    print(f"reused after waiting: {reused}; states: {states}")
    assert reused >= 1, "at least one stage was found published while the run waited"
