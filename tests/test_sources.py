"""Running every source: one failing never sinks the others, and loses nothing already stored."""

from __future__ import annotations

import pytest

from loretune.config import HttpConfig, SourcesConfig
from loretune.ingest import sources
from loretune.ingest.documents import Document

HTTP = HttpConfig(max_retries=0, min_interval_s=0.0).model_dump()


def sources_settings(values: dict) -> dict:
    """Each source's settings, translated from a validated config section as the ingest task does."""
    return sources.settings(SourcesConfig.model_validate(values).model_dump())


def doc(source: str, id_: str) -> Document:
    return Document(source=source, id=id_, url=f"http://x/{id_}", title=id_, text="t", image_urls=[],
                    license="l", attribution="a", fetched_at="2026-01-01T00:00:00+00:00", meta={})


def test_when_every_source_fails_the_run_fails_with_each_reason(samples, monkeypatch):
    previous = [doc("fandom", "1"), doc("fandom", "2")]
    monkeypatch.setattr(sources.fandom, "crawl", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    cfg = sources_settings({"fandom": {"api_url": f"{samples.base_url}/fandom/api.php"},
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
    cfg = sources_settings({"fandom": {"api_url": f"{samples.base_url}/fandom/api.php"},
                                        "reddit": {"enabled": False}, "youtube": {"enabled": False},
                                        "sportskeeda": {"enabled": False}})
    lines = []
    runners = {"fandom": sources.RUNNERS["fandom"], "fandom_mirror": sources.RUNNERS["fandom"]}
    reads = []
    scope = sources.SCOPES["fandom"](cfg["fandom"])
    stored = sources.Stored(read=lambda: reads.append(1) or previous, scopes={"fandom": scope}, version="v1")
    docs, reports = sources.collect({**cfg, "fandom_mirror": cfg["fandom"]}, HTTP, log=lines.append,
                                    runners=runners, previous=lambda: stored,
                                    scopes={"fandom": sources.SCOPES["fandom"], "fandom_mirror": sources.SCOPES["fandom"]})
    assert reports["fandom"].status == "failed" and reports["fandom"].carried_forward == 2
    assert reports["fandom"].carried_from == "v1" and reports["fandom"].not_carried is None
    assert reports["fandom"].scope == scope == {"api_url": f"{samples.base_url}/fandom/api.php"}
    assert reports["fandom_mirror"].status == "ok" and reports["fandom_mirror"].documents == 30
    assert {d.id for d in docs if d.id in {"1", "2"}} == {"1", "2"}
    assert any("keeping its 2 documents" in line for line in lines)
    assert reads == [1], "the stored corpus is read once, and only because a source failed"


def test_a_good_run_never_reads_the_stored_corpus(samples):
    cfg = sources_settings({"fandom": {"api_url": f"{samples.base_url}/fandom/api.php"},
                                        "reddit": {"enabled": False}, "youtube": {"enabled": False},
                                        "sportskeeda": {"enabled": False}})
    def unexpected():
        raise AssertionError("read the stored corpus although no source failed")
    docs, reports = sources.collect(cfg, HTTP, log=lambda m: None, previous=lambda: sources.Stored(read=unexpected))
    assert reports["fandom"].status == "ok" and len(docs) == 30


def fandom_only(api_url: str) -> dict:
    return sources_settings({"fandom": {"api_url": api_url}, "reddit": {"enabled": False},
                                         "youtube": {"enabled": False}, "sportskeeda": {"enabled": False}})


def failing_fandom(seen: list) -> dict:
    def crawl(*args, **kwargs):
        seen.append(kwargs)
        raise RuntimeError("boom")

    # and a source that works, since a run where every source fails publishes nothing at all
    return {"fandom": lambda cfg, session, prior, log: crawl(state=prior.state, stored=prior.documents),
            "other": lambda cfg, session, prior, log: ([doc("other", "9")], {}, {})}


def test_a_failed_source_does_not_inherit_documents_from_another_scope():
    """The stored fandom documents came from the sample server; tonight's config asks another wiki."""
    sample = fandom_only("http://127.0.0.1:8765/fandom/api.php")
    stored = sources.Stored(states={"fandom": {"scope": "x", "since": "2026-01-01T00:00:00Z"}},
                            read=lambda: pytest.fail("read documents of another scope"),
                            scopes={"fandom": sources.SCOPES["fandom"](sample["fandom"])}, version="v1")
    lines, seen = [], []
    cfg = fandom_only("https://onepiece.fandom.com/api.php")
    _, reports = sources.collect(cfg, HTTP, log=lines.append, previous=lambda: stored, runners=failing_fandom(seen))
    report = reports["fandom"]
    assert report.status == "failed" and report.carried_forward == 0 and report.carried_from is None
    assert report.state == {} and seen[0]["state"] == {} and seen[0]["stored"]() == [], "no state or documents offered"
    assert "another source scope" in report.not_carried
    assert "'http://127.0.0.1:8765/fandom/api.php' then, 'https://onepiece.fandom.com/api.php' now" in report.not_carried
    assert any("nothing carried forward" in line and "onepiece" in line for line in lines)
    assert report.scope == {"api_url": "https://onepiece.fandom.com/api.php"}, "recorded for the next run"


@pytest.mark.parametrize(("stored", "why"), [
    (sources.Stored(read=lambda: [doc("fandom", "1")]), "no stored documents version"),
    (sources.Stored(read=lambda: [doc("fandom", "1")], scopes={}, version="v0"),
     "documents v0 does not record where its fandom documents came from"),
], ids=["no version", "no scope recorded"])
def test_nothing_is_carried_without_proof_of_where_it_came_from(stored, why):
    _, reports = sources.collect(fandom_only("http://x/api.php"), HTTP, log=lambda m: None,
                                 previous=lambda: stored, runners=failing_fandom([]))
    assert reports["fandom"].carried_forward == 0 and reports["fandom"].not_carried == why


def test_the_same_scope_gets_its_state_and_documents_back():
    cfg = fandom_only("http://x/api.php")
    state = {"scope": "s", "since": "2026-01-01T00:00:00Z"}
    stored = sources.Stored(states={"fandom": state}, read=lambda: [doc("fandom", "1"), doc("reddit", "2")],
                            scopes={"fandom": {"api_url": "http://x/api.php"}}, version="v1")
    seen = []
    _, reports = sources.collect(cfg, HTTP, log=lambda m: None, previous=lambda: stored, runners=failing_fandom(seen))
    assert seen[0]["state"] == state and [d.id for d in seen[0]["stored"]()] == ["1"]
    assert reports["fandom"].carried_forward == 1 and reports["fandom"].carried_from == "v1"


def test_source_settings_are_plain_values_and_a_key_nobody_takes_is_refused():
    """The task's translation: tuples for lists, the task-only credentials block left out, and a
    section key the reader neither takes nor names as task-only refused rather than dropped."""
    from loretune.config import RedditSource
    from loretune.settings import from_values

    reddit_settings = sources.settings({"reddit": RedditSource(credentials_block="reddit-app").model_dump()})["reddit"]
    assert reddit_settings.subreddits == ("Naruto",) and not hasattr(reddit_settings, "credentials_block")
    hash(reddit_settings)  # frozen and hashable: nothing downstream can change what the task decided
    with pytest.raises(TypeError, match="RedditSettings takes no subredits"):
        from_values(sources.reddit.RedditSettings, {**RedditSource().model_dump(), "subredits": ["x"]},
                    ignore=("credentials_block",))
