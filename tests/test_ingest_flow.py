"""`loretune ingest` end to end over all four sample sources: credentials and secrets, faults."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loretune.store import ArtifactStore

CANARY = "canary-5ecret-d0-not-leak-7f3a"


@pytest.fixture()
def ingest(prefect_server, samples, tmp_path, monkeypatch):
    from loretune.flows.refresh import ingest as ingest_flow

    monkeypatch.setenv("REDDIT_CLIENT_ID", "loretune-test")
    monkeypatch.setenv("REDDIT_CLIENT_SECRET", CANARY)

    def run(**overrides):
        # The environment's credentials, as against the real site: sample mode would bring its own.
        overrides = {"store": str(tmp_path / "store"), "sources.reddit.sample_credentials": False, **overrides}
        return ingest_flow(overrides=overrides, sample_sources=samples.base_url)

    return run


def test_all_four_sources_land_in_one_documents_version(ingest, tmp_path):
    result = ingest()
    version = result["stages"]["documents"]["version"]
    manifest = ArtifactStore(tmp_path / "store").manifest("documents", version)
    assert {n: s["status"] for n, s in manifest["sources"].items()} == dict.fromkeys(
        ["fandom", "reddit", "youtube", "sportskeeda"], "ok")
    assert manifest["sources"]["reddit"]["documents"] == 6


def test_the_reddit_secret_never_reaches_anything_written(ingest, tmp_path, capfd, caplog):
    ingest()
    ingest(**{"sources.reddit.oauth_url": "http://127.0.0.1:9/nowhere"})  # a failing Reddit, too
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "store").rglob("*")
                      if p.is_file() and p.suffix in {".json", ".parquet", ""})
    out, err = capfd.readouterr()
    prefect_home = Path(os.environ["PREFECT_HOME"])
    results = "".join(p.read_bytes().decode("utf-8", "replace") for p in prefect_home.rglob("*") if p.is_file())
    published = {"store": written, "stdout": out, "stderr": err, "log": caplog.text,
                 "Prefect artifacts": all_artifacts_text(), "Prefect home": results}
    assert "fandom" in published["Prefect artifacts"], "the search must see what the runs published"
    for where, text in published.items():
        assert CANARY not in text, f"the Reddit client secret leaked into {where}"


def test_a_failing_source_does_not_sink_the_others_and_keeps_its_documents(ingest, samples, tmp_path):
    first = ingest()
    samples.inject("/sportskeeda", "offsite", times=100)  # the site is down tonight; the config is the same
    try:
        broken = ingest()
    finally:
        samples.clear_faults()
    assert broken["stages"]["documents"]["version"] == first["stages"]["documents"]["version"], \
        "same content: nothing new published, nothing lost"
    rows = {row["source"]: row for row in latest_table("naruto-sources")}  # what this run saw
    assert rows["sportskeeda"]["status"] == "failed" and "refused" in rows["sportskeeda"]["error"]
    assert rows["sportskeeda"]["carried_forward"] == 6
    assert rows["sportskeeda"]["carried_from"] == first["stages"]["documents"]["version"]
    assert rows["fandom"]["status"] == rows["youtube"]["status"] == rows["reddit"]["status"] == "ok"


def source_documents(store: Path, version: str) -> dict[str, int]:
    from loretune.ingest.documents import read_documents

    docs = read_documents(ArtifactStore(store).local_path("documents", version) / "documents.parquet")
    return {source: sum(d.source == source for d in docs) for source in {d.source for d in docs}}


def test_two_domains_share_a_store_but_never_each_others_documents(ingest, samples, tmp_path):
    store = tmp_path / "store"
    naruto = ingest()["stages"]["documents"]["version"]
    samples.inject("/fandom/api.php", "offsite")  # domain b's wiki fails on its first run
    try:
        b_first = ingest(domain="b")["stages"]["documents"]["version"]
    finally:
        samples.clear_faults()
    fandom = ArtifactStore(store).manifest("documents", b_first)["sources"]["fandom"]
    assert fandom["status"] == "failed" and fandom["carried_forward"] == 0
    assert fandom["not_carried"] == "no stored documents version of domain 'b' (1 of other domains, or recording no domain, are never used)"
    assert "fandom" not in source_documents(store, b_first), "naruto's wiki pages stay naruto's"
    assert source_documents(store, naruto)["fandom"] == 30
    assert {m["version"]: m["domain"] for m in ArtifactStore(store).versions("documents")} == {naruto: "naruto",
                                                                                               b_first: "b"}

    b_good = ingest(domain="b")["stages"]["documents"]["version"]
    assert b_good != naruto, "the same corpus in another domain is another version, with its own manifest"
    samples.inject("/fandom/api.php", "offsite")
    try:
        b_bad = ingest(domain="b")["stages"]["documents"]["version"]
    finally:
        samples.clear_faults()
    rows = {row["source"]: row for row in latest_table("b-sources")}
    assert b_bad == b_good and rows["fandom"]["carried_from"] == b_good and rows["fandom"]["carried_forward"] == 30, \
        "b's own past is carried forward"


def test_documents_from_the_sample_sources_are_not_inherited_by_a_run_against_another_url(ingest, tmp_path):
    store = tmp_path / "store"
    first = ingest()["stages"]["documents"]["version"]
    assert source_documents(store, first)["fandom"] == 30
    real = ingest(**{"sources.fandom.api_url": "http://127.0.0.1:9/api.php", "http.max_retries": 0})
    version = real["stages"]["documents"]["version"]
    fandom = ArtifactStore(store).manifest("documents", version)["sources"]["fandom"]
    assert fandom["status"] == "failed" and fandom["carried_forward"] == 0 and fandom["carried_from"] is None
    assert "api_url" in fandom["not_carried"] and "127.0.0.1:9/api.php' now" in fandom["not_carried"]
    assert fandom["scope"] == {"api_url": "http://127.0.0.1:9/api.php"}
    assert "fandom" not in source_documents(store, version)
    assert source_documents(store, version)["sportskeeda"] == 6, "the other sources ran as usual"
    rows = {row["source"]: row for row in latest_table("naruto-sources")}
    assert rows["fandom"]["not_carried"] == fandom["not_carried"], "the run's sources table says why too"


def all_artifacts_text() -> str:
    """Every artifact in the Prefect API, as the UI would show it."""
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def fetch():
        async with get_client() as client:
            return await client.read_artifacts(limit=200)

    return "".join(f"{a.key} {a.description} {a.data}" for a in run_coro_as_sync(fetch()))


def latest_table(key: str) -> list[dict]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def fetch():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                               sort=ArtifactSort.CREATED_DESC, limit=1)

    data = run_coro_as_sync(fetch())[0].data
    return json.loads(data) if isinstance(data, str) else data


def test_a_second_ingest_only_checks_and_an_edit_refetches_just_the_edited_pages(prefect_server, tmp_path,
                                                                                 monkeypatch):
    from loretune.flows.refresh import ingest as ingest_flow
    from loretune.samples.server import SampleSourcesServer

    monkeypatch.delenv("REDDIT_CLIENT_ID", raising=False)
    monkeypatch.setenv("LORETUNE_HOME", str(tmp_path / "home"))  # an HTTP cache of its own
    store = ArtifactStore(tmp_path / "store")
    with SampleSourcesServer() as server:  # its own wiki: this test edits it
        def run() -> str:
            server.clear_log()
            result = ingest_flow(overrides={"store": str(tmp_path / "store")}, sample_sources=server.base_url)
            return result["stages"]["documents"]["version"]

        first = run()
        assert run() == first, "nothing changed: nothing published"
        api = [r["params"] for r in server.requests if r["path"] == "/fandom/api.php"]
        assert [p.get("meta") or p.get("list") for p in api] == ["siteinfo", "recentchanges"]
        static = [r for r in server.requests if not r["path"].startswith(("/fandom/api.php", "/reddit"))]
        assert static and {r["status"] for r in static} == {304}, "everything else was a bodiless check"

        for title in ("Gaara", "Chidori"):
            server.wiki.edit(title, server.wiki.pages[title].content + f"\n{title} was edited tonight.\n")
        third = run()
    assert third != first
    fandom = store.manifest("documents", third)["sources"]["fandom"]
    assert fandom["stats"]["mode"] == "incremental" and fandom["stats"]["refetched"] == ["Chidori", "Gaara"]
    assert fandom["documents"] == 30


def test_reddit_credentials_can_come_from_a_prefect_secret_block(ingest, tmp_path, monkeypatch, capfd):
    from prefect.blocks.system import Secret

    Secret(value={"client_id": "loretune-test", "client_secret": CANARY}).save("reddit-test-app", overwrite=True)
    monkeypatch.delenv("REDDIT_CLIENT_ID")
    monkeypatch.delenv("REDDIT_CLIENT_SECRET")
    result = ingest(**{"sources.reddit.credentials_block": "reddit-test-app"})
    store = tmp_path / "store"
    manifest = ArtifactStore(store).manifest("documents", result["stages"]["documents"]["version"])
    assert manifest["sources"]["reddit"]["status"] == "ok" and manifest["sources"]["reddit"]["documents"] == 6
    written = "".join(p.read_text(errors="replace") for p in store.rglob("*") if p.is_file())
    out, err = capfd.readouterr()
    assert CANARY not in written + out + err


def test_a_missing_secret_block_fails_reddit_alone_and_names_the_block(ingest, monkeypatch):
    monkeypatch.delenv("REDDIT_CLIENT_ID")
    ingest(**{"sources.reddit.credentials_block": "no-such-block"})
    rows = {row["source"]: row for row in latest_table("naruto-sources")}
    assert rows["reddit"]["status"] == "failed" and "'no-such-block'" in rows["reddit"]["error"]
    assert rows["fandom"]["status"] == rows["youtube"]["status"] == rows["sportskeeda"]["status"] == "ok"


@pytest.mark.slow
def test_the_reddit_secret_never_reaches_anything_a_full_finetune_run_leaves(prefect_server, samples, tmp_path,
                                                                            monkeypatch, capfd, caplog):
    """The canary through every stage (documents to export): no file under the store, the HTTP cache
    or Prefect's home, no Prefect artifact, no log line (the API's and the captured ones), no task or
    flow run state message (where an exception's message goes) and nothing in the flow's result."""
    from recipes import QUICK_OPEN, TINY

    from loretune.config import state_dir
    from loretune.flows.finetune import finetune

    monkeypatch.setenv("REDDIT_CLIENT_ID", "loretune-test")
    monkeypatch.setenv("REDDIT_CLIENT_SECRET", CANARY)
    store = tmp_path / "store"
    overrides = {"store": str(store), "sources.reddit.sample_credentials": False, **TINY, **QUICK_OPEN,
                 "training.max_steps": 2, "training.save_steps": 2, "evaluation.max_items": 40,
                 "evaluation.batch_size": 32, "export.checkpoint": "last"}
    result = finetune(config="deployments/naruto.yaml", overrides=overrides, sample_sources=samples.base_url)
    stages = result["stages"]
    assert set(stages) >= {"documents", "images", "features", "dataset", "checkpoints", "evaluation", "export"}
    manifest = ArtifactStore(store).manifest("documents", stages["documents"]["version"])
    assert manifest["sources"]["reddit"]["status"] == "ok", "the secret was used: Reddit ran"
    assert ArtifactStore(store).manifest("export", stages["export"]["version"])["details"]["exported"] is True

    def files_text(*roots: Path) -> str:
        return "".join(p.read_bytes().decode("utf-8", "replace") for root in roots if root.exists()
                       for p in root.rglob("*") if p.is_file())

    out, err = capfd.readouterr()
    logs, states = prefect_logs_and_states()
    published = {"store": files_text(store), "state folder (HTTP cache, scratch)": files_text(state_dir()),
                 "Prefect home": files_text(Path(os.environ["PREFECT_HOME"])), "stdout": out, "stderr": err,
                 "log": caplog.text, "Prefect artifacts": all_artifacts_text(), "Prefect logs": logs,
                 "run states and their exceptions": states, "flow result": json.dumps(result, default=str)}
    assert "export" in published["Prefect artifacts"] and "reddit" in published["Prefect logs"], \
        "the search must see what the run published and logged"
    for where, text in published.items():
        assert CANARY not in text, f"the Reddit client secret leaked into {where}"


def prefect_logs_and_states() -> tuple[str, str]:
    """Every log line in the Prefect API, and every flow and task run's state name and message."""
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def fetch():
        async with get_client() as client:
            logs, offset = [], 0
            while batch := await client.read_logs(limit=200, offset=offset):
                logs += batch
                offset += len(batch)
            flows = await client.read_flow_runs(limit=200)
            tasks = await client.read_task_runs(limit=200)
            return logs, [*flows, *tasks]

    logs, runs = run_coro_as_sync(fetch())
    return ("\n".join(f"{log.name} {log.message}" for log in logs),
            "\n".join(f"{run.name} {run.state.name if run.state else ''} {run.state.message if run.state else ''}"
                      for run in runs))
