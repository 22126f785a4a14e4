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
        return ingest_flow(overrides={"store": str(tmp_path / "store"), **overrides}, sample_sources=samples.base_url)

    return run


def test_all_four_sources_land_in_one_documents_version(ingest, tmp_path):
    result = ingest()
    version = result["stages"]["documents"]["version"]
    manifest = ArtifactStore(tmp_path / "store").manifest("documents", version)
    assert {n: s["status"] for n, s in manifest["sources"].items()} == dict.fromkeys(
        ["fandom", "reddit", "youtube", "sportskeeda"], "ok")
    assert manifest["sources"]["reddit"]["documents"] == 4


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


def test_a_failing_source_does_not_sink_the_others_and_keeps_its_documents(ingest, tmp_path):
    first = ingest()
    broken = ingest(**{"sources.sportskeeda.feed_url": "http://127.0.0.1:9/feed",
                       "sources.sportskeeda.sitemap_urls": []})
    assert broken["stages"]["documents"]["version"] == first["stages"]["documents"]["version"], \
        "same content: nothing new published, nothing lost"
    rows = {row["source"]: row for row in latest_table("naruto-sources")}  # what this run saw
    assert rows["sportskeeda"]["status"] == "failed" and "127.0.0.1:9" in rows["sportskeeda"]["error"]
    assert rows["sportskeeda"]["carried_forward"] == 6
    assert rows["fandom"]["status"] == rows["youtube"]["status"] == rows["reddit"]["status"] == "ok"


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
    assert manifest["sources"]["reddit"]["status"] == "ok" and manifest["sources"]["reddit"]["documents"] == 4
    written = "".join(p.read_text(errors="replace") for p in store.rglob("*") if p.is_file())
    out, err = capfd.readouterr()
    assert CANARY not in written + out + err


def test_a_missing_secret_block_fails_reddit_alone_and_names_the_block(ingest, monkeypatch):
    monkeypatch.delenv("REDDIT_CLIENT_ID")
    ingest(**{"sources.reddit.credentials_block": "no-such-block"})
    rows = {row["source"]: row for row in latest_table("naruto-sources")}
    assert rows["reddit"]["status"] == "failed" and "'no-such-block'" in rows["reddit"]["error"]
    assert rows["fandom"]["status"] == rows["youtube"]["status"] == rows["sportskeeda"]["status"] == "ok"
