"""The polite HTTP client against the sample server: robots.txt, per-host interval, redirects."""

from __future__ import annotations

import time

import pytest

from loretune.ingest.http import PoliteSession, SourceError

UA = "loretune-test/1.0"


def session(**overrides) -> PoliteSession:
    settings = dict(user_agent=UA, connect_timeout_s=2, read_timeout_s=5, max_retries=2, backoff_s=0.05,
                    max_response_bytes=1_000_000, min_interval_s=0.0,
                    configured_hosts=["127.0.0.1"])  # the sample server is a configured host
    return PoliteSession(**{**settings, **overrides})


def test_robots_wildcard_rules_are_honoured_and_fetched_once(samples):
    samples.clear_log()
    client = session()
    client.get_json(f"{samples.base_url}/fandom/api.php", {"action": "query", "meta": "siteinfo", "format": "json"})
    with pytest.raises(SourceError, match="disallowed by .*robots.txt"):
        client.get_bytes(f"{samples.base_url}/fandom/wiki/Special:Random")
    with pytest.raises(SourceError, match="robots.txt"):  # `/*?action=edit`: a wildcard rule
        client.get_bytes(f"{samples.base_url}/fandom/wiki/Rasengan?action=edit")
    assert [r["path"] for r in samples.requests].count("/robots.txt") == 1
    assert "/fandom/wiki/Special:Random" not in [r["path"] for r in samples.requests], "never asked"


def test_robots_can_be_turned_off_for_sites_we_own(samples):
    body = session(respect_robots=False).get_bytes(f"{samples.base_url}/fandom/wiki/Rasengan?action=edit")
    assert body


def test_requests_to_one_host_keep_the_minimum_interval(samples):
    client = session(min_interval_s=0.3)
    url = f"{samples.base_url}/fandom/api.php"
    params = {"action": "query", "meta": "siteinfo", "format": "json"}
    start = time.monotonic()
    for _ in range(3):  # two intervals between three requests (robots.txt is not rate-limited)
        client.get_json(url, params)
    assert time.monotonic() - start >= 0.6


def test_redirect_to_another_host_is_refused_and_says_where(samples):
    samples.inject("/fandom/api.php", "offsite")
    with pytest.raises(SourceError, match=r"redirect to http://127\.0\.0\.2:\d+/fandom/api\.php.* refused"):
        session().get_json(f"{samples.base_url}/fandom/api.php", {"action": "query", "format": "json"})
    assert not any(r["path"] == "/fandom/api.php" and r["fault"] is None for r in samples.requests[-1:])


def test_with_a_cache_an_unchanged_page_costs_a_bodiless_304_and_reads_the_same(samples, tmp_path):
    url = f"{samples.base_url}/youtube/Pz4wQe8RtYk.info.json"
    first = session(cache_dir=tmp_path / "cache", respect_robots=False)
    body = first.get_bytes(url)
    assert first.cached_responses == 0 and first.bytes_received == len(body)

    samples.clear_log()
    second = session(cache_dir=tmp_path / "cache", respect_robots=False)  # a later run, the same cache
    assert second.get_bytes(url) == body
    assert [r["status"] for r in samples.requests] == [304]
    assert second.cached_responses == 1 and second.bytes_received == 0 and second.requests_made == 1


def test_a_changed_page_is_downloaded_again_despite_the_cache(tmp_path):
    import shutil

    from loretune.samples.server import SNAPSHOT_DIR, SampleSourcesServer

    snapshot = tmp_path / "snapshot"
    shutil.copytree(SNAPSHOT_DIR / "youtube", snapshot / "youtube")
    shutil.copytree(SNAPSHOT_DIR / "fandom", snapshot / "fandom")
    info = snapshot / "youtube" / "Pz4wQe8RtYk.info.json"
    with SampleSourcesServer(snapshot_dir=snapshot) as server:
        url = f"{server.base_url}/youtube/Pz4wQe8RtYk.info.json"
        before = session(cache_dir=tmp_path / "cache", respect_robots=False).get_bytes(url)
        info.write_text(info.read_text().replace("Every Hokage", "Each Hokage"))
        after = session(cache_dir=tmp_path / "cache", respect_robots=False).get_bytes(url)
        statuses = [r["status"] for r in server.requests]
    assert b"Every Hokage" in before and b"Each Hokage" in after
    assert statuses == [200, 200], "the stale validator was offered, refused, and the new body read"


def test_api_answers_carry_no_validator_so_they_are_never_served_stale(samples, tmp_path):
    url, params = f"{samples.base_url}/fandom/api.php", {"action": "query", "meta": "siteinfo", "format": "json"}
    for _ in range(2):
        client = session(cache_dir=tmp_path / "cache", respect_robots=False)
        client.get_json(url, params)
        assert client.cached_responses == 0


def test_errors_say_whether_trying_again_later_can_help(samples):
    """The images stage retries transient failures next run and keeps final ones: the client decides which."""
    image = f"{samples.base_url}/fandom/images/Naruto%20Uzumaki.png"
    client = session(max_retries=0)

    samples.inject("/fandom/images/", "503")
    with pytest.raises(SourceError, match="HTTP 503") as busy:
        client.get_bytes(image)
    samples.inject("/fandom/images/", "429")
    with pytest.raises(SourceError, match="HTTP 429") as throttled:
        client.get_bytes(image)
    with pytest.raises(SourceError) as unreachable:  # nothing listens on port 9
        client.get_bytes("http://127.0.0.1:9/x.png")
    assert busy.value.transient and throttled.value.transient and unreachable.value.transient

    with pytest.raises(SourceError, match="HTTP 404") as missing:
        client.get_bytes(f"{samples.base_url}/fandom/images/No%20such%20file.png")
    with pytest.raises(SourceError, match="byte limit") as too_big:
        session(max_response_bytes=10).get_bytes(image)
    samples.inject("/fandom/images/", "offsite")
    with pytest.raises(SourceError, match="refused") as offsite:
        client.get_bytes(image)
    assert not (missing.value.transient or too_big.value.transient or offsite.value.transient)
