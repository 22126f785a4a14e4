"""Running every source: one failing never sinks the others, and loses nothing already stored."""

from __future__ import annotations

import pytest

from loretune.config import HttpConfig, SourcesConfig
from loretune.ingest import sources
from loretune.ingest.documents import Document

HTTP = HttpConfig(max_retries=0, min_interval_s=0.0)


def doc(source: str, id_: str) -> Document:
    return Document(source=source, id=id_, url=f"http://x/{id_}", title=id_, text="t", image_urls=[],
                    license="l", attribution="a", fetched_at="2026-01-01T00:00:00+00:00", meta={})


def test_when_every_source_fails_the_run_fails_with_each_reason(samples, monkeypatch):
    previous = [doc("fandom", "1"), doc("fandom", "2")]
    monkeypatch.setattr(sources.fandom, "crawl", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    cfg = SourcesConfig.model_validate({"fandom": {"api_url": f"{samples.base_url}/fandom/api.php"},
                                        "reddit": {"enabled": False}, "youtube": {"enabled": False},
                                        "sportskeeda": {"enabled": False}})
    with pytest.raises(sources.AllSourcesFailed, match="fandom: RuntimeError: boom"):
        sources.collect(cfg, HTTP, log=lambda m: None, previous=lambda: sources.Stored(read=lambda: previous))


def test_failed_source_documents_are_carried_forward_while_others_refresh(samples, monkeypatch):
    previous = [doc("fandom", "1"), doc("fandom", "2")]
    real_crawl = sources.fandom.crawl
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real_crawl(*args, **kwargs)

    monkeypatch.setattr(sources.fandom, "crawl", flaky)
    cfg = SourcesConfig.model_validate({"fandom": {"api_url": f"{samples.base_url}/fandom/api.php"},
                                        "reddit": {"enabled": False}, "youtube": {"enabled": False},
                                        "sportskeeda": {"enabled": False}})
    lines = []
    runners = {"fandom": sources.RUNNERS["fandom"], "fandom_mirror": sources.RUNNERS["fandom"]}
    reads = []
    docs, reports = sources.collect(cfg, HTTP, log=lines.append, runners=runners,
                                    previous=lambda: sources.Stored(read=lambda: reads.append(1) or previous))
    assert reports["fandom"].status == "failed" and reports["fandom"].carried_forward == 2
    assert reports["fandom_mirror"].status == "ok" and reports["fandom_mirror"].documents == 30
    assert {d.id for d in docs if d.id in {"1", "2"}} == {"1", "2"}
    assert any("keeping its 2 documents" in line for line in lines)
    assert reads == [1], "the stored corpus is read once, and only because a source failed"


def test_a_good_run_never_reads_the_stored_corpus(samples):
    cfg = SourcesConfig.model_validate({"fandom": {"api_url": f"{samples.base_url}/fandom/api.php"},
                                        "reddit": {"enabled": False}, "youtube": {"enabled": False},
                                        "sportskeeda": {"enabled": False}})
    def unexpected():
        raise AssertionError("read the stored corpus although no source failed")
    docs, reports = sources.collect(cfg, HTTP, log=lambda m: None, previous=lambda: sources.Stored(read=unexpected))
    assert reports["fandom"].status == "ok" and len(docs) == 30
