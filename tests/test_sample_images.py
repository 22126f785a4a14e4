"""With the sample sources, every image the documents link is served offline: none fails, so the
images stage's second run is a plain cache hit (the demo's "all cache hits after ingest").

A link to the real internet (as the Reddit posts once had, to i.redd.it / preview.redd.it) fails
offline as a transient error, and an artifact with transient failures is never a cache hit: the
stage would go back to the unreachable host on every run.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from loretune.ingest.documents import read_documents
from loretune.store import ArtifactStore

CANARY = "canary-sample-images-1c4e"


@pytest.fixture()
def sample_run(prefect_server, samples, tmp_path, monkeypatch):
    """Ingest all four sample sources once; returns (config, documents ref)."""
    from loretune.flows.refresh import ingest as ingest_flow
    from loretune.flows.stages import resolve_config

    monkeypatch.setenv("REDDIT_CLIENT_ID", "loretune-test")
    monkeypatch.setenv("REDDIT_CLIENT_SECRET", CANARY)
    overrides = {"store": str(tmp_path / "store")}
    result = ingest_flow(overrides=overrides, sample_sources=samples.base_url)
    cfg = resolve_config("deployments/naruto.yaml", overrides, samples.base_url)
    store = ArtifactStore(cfg.store_uri())
    return cfg, store.ref("documents", result["stages"]["documents"]["version"])


@pytest.fixture(scope="module")
def images_stage(prefect_server):
    """The images stage alone, as `prepare_data` runs it; returns its version and state."""
    from prefect import flow

    from loretune.flows.stages import run_stage
    from loretune.tasks.images import fetch_images

    @flow(name="sample-images-test")
    def images_only(cfg, documents) -> dict:
        ledger: dict[str, dict[str, str]] = {}
        run_stage(fetch_images, ledger, store=cfg.store_uri(), domain=cfg.domain, documents=documents,
                  params=cfg.images, http_cfg=cfg.http)
        return ledger["images"]

    return images_only


def test_every_image_url_of_the_sample_sources_is_fetched_and_the_second_run_is_cached(
        sample_run, images_stage, samples):
    cfg, documents = sample_run
    docs = read_documents(documents.local_path() / "documents.parquet")
    urls = list(dict.fromkeys(url for doc in docs for url in doc.image_urls))
    sample = urlsplit(samples.base_url).netloc
    assert {urlsplit(url).netloc for url in urls} == {sample}, "every image is on the sample server"
    reddit = [url for doc in docs if doc.source == "reddit" for url in doc.image_urls]
    assert len(reddit) == 3 and all("/reddit/media/" in url for url in reddit)

    samples.clear_log()
    first = images_stage(cfg, documents)
    manifest = ArtifactStore(cfg.store_uri()).manifest("images", first["version"])
    assert first["state"] == "Completed"
    assert manifest["counts"]["urls"] == len(urls)
    assert manifest["counts"]["failed"] == 0 and manifest["counts"]["transient_failures"] == 0
    fetched = [r for r in samples.requests if r["path"] != "/robots.txt"]
    assert {r["status"] for r in fetched} == {200}
    assert {r["path"] for r in fetched} >= {urlsplit(url).path for url in reddit}

    samples.clear_log()
    second = images_stage(cfg, documents)
    assert second == {"version": first["version"], "state": "Cached"}
    assert samples.requests == [], "a cache hit asks nothing"
