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
    assert rows["sportskeeda"]["carried_forward"] == 5
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
