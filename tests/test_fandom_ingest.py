"""Fandom ingest against the sample server, and the polite HTTP client under injected faults."""

from __future__ import annotations

import socket
import struct
import time
import zlib
from pathlib import Path

import pytest
import requests

from loretune.ingest.fandom import crawl
from loretune.ingest.http import PoliteSession, SourceError
from loretune.samples.server import SampleSourcesServer, fandom_api_url


def session(**overrides: object) -> PoliteSession:
    settings = dict(
        user_agent="loretune-tests/0", connect_timeout_s=2.0, read_timeout_s=5.0, max_retries=3,
        backoff_s=0.01, max_response_bytes=5_000_000,
        # robots.txt has its own tests (test_polite_session.py); here it would add one request
        # to every exact count below.
        respect_robots=False,
        configured_hosts=["127.0.0.1"],  # the sample server is a configured host
    )
    return PoliteSession(**{**settings, **overrides})


def tiny_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80\x40\x20" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture
def synthetic_snapshot(tmp_path: Path) -> Path:
    """60 tiny pages in Category:Things, plus the awkward cases a real wiki has."""
    pages, images = tmp_path / "fandom" / "pages", tmp_path / "fandom" / "images"
    pages.mkdir(parents=True)
    images.mkdir()
    for i in range(1, 61):
        image = f"|image=Thing {i:02d}.png\n" if i % 10 == 0 else ""
        body = f"{{{{Infobox thing\n{image}|rank=Rank {i}\n}}}}\nThing {i:02d} is a '''thing'''.\n\n[[File:Missing picture.png]]\n[[Category:Things]]\n"
        (pages / f"Thing_{i:02d}.wiki").write_text(body, encoding="utf-8")
    for i in range(10, 61, 10):
        (images / f"Thing {i:02d}.png").write_bytes(tiny_png(2, 3))
    (pages / "Alias.wiki").write_text("#REDIRECT [[Thing 01]]\n[[Category:Things]]\n", encoding="utf-8")
    (pages / "Alias_of_alias.wiki").write_text("#REDIRECT [[Alias]]\n[[Category:Things]]\n", encoding="utf-8")
    (pages / "Zed.wiki").write_text("#REDIRECT [[Thing 01]]\n[[Category:Things]]\n", encoding="utf-8")  # sorts last
    (pages / "Thing.wiki").write_text("'''Thing''' may mean:\n* [[Thing 01]]\n{{Disambig}}\n[[Category:Things]]\n", encoding="utf-8")
    (pages / "Shared.wiki").write_text("In two categories.\n[[Category:Things]]\n[[Category:Others]]\n", encoding="utf-8")
    return tmp_path


def revisions_requests(server: SampleSourcesServer) -> list[dict]:
    return [r["params"] for r in server.requests if r["params"].get("prop") == "revisions"]


# --- crawl against the real snapshot ---------------------------------------------------------


@pytest.fixture
def snapshot_crawl():
    with SampleSourcesServer() as server:
        lines: list[str] = []
        docs, stats, _ = crawl(fandom_api_url(server.base_url), ["Characters", "Jutsu"], session(), log=lines.append)
        yield server, docs, stats, lines


def test_snapshot_crawl_stores_each_page_once_and_skips_redirects_and_disambiguation(snapshot_crawl):
    server, docs, stats, lines = snapshot_crawl
    titles = [d.title for d in docs]
    assert len(titles) == len(set(titles)) == len({d.id for d in docs}) == stats["pages"]
    assert "Naruto Uzumaki" in titles and "Naruto" not in titles and "Hyuga" not in titles
    assert stats["skipped"]["redirects"] == ["Naruto"] and stats["skipped"]["disambiguation"] == ["Hyuga"]
    assert stats["warnings"] == []  # the server warns about unknown parameters: we sent none
    assert "fandom: Category:Characters: 20 pages" in lines
    assert any(line.startswith(f"fandom: fetched {len(titles) + 2}/{len(titles) + 2} pages in 1 requests") for line in lines)


def test_snapshot_crawl_requests_are_batched_and_all_carry_maxlag(snapshot_crawl):
    server, docs, stats, _ = snapshot_crawl
    log = server.requests
    assert stats["requests"] == len(log)
    assert all(r["params"]["maxlag"] == "5" and r["params"]["format"] == "json" for r in log)
    assert stats["titles_per_revisions_request"] == [len(r["titles"].split("|")) for r in revisions_requests(server)]
    assert stats["revisions_requests"] == 1  # 32 titles fit one batch of 50
    categorymembers = [r["params"] for r in log if r["params"].get("list") == "categorymembers"]
    assert len(categorymembers) > 2 and any("cmcontinue" in p for p in categorymembers)  # continuation followed


def test_snapshot_documents_carry_urls_images_licence_and_infobox(snapshot_crawl):
    server, docs, stats, _ = snapshot_crawl
    naruto = next(d for d in docs if d.title == "Naruto Uzumaki")
    assert naruto.source == "fandom" and naruto.id == str(naruto.meta["pageid"])
    assert naruto.url == f"{server.base_url}/fandom/wiki/Naruto_Uzumaki"
    assert naruto.image_urls[0].endswith("/fandom/images/Naruto_Uzumaki.png")  # the infobox image comes first
    assert len(naruto.image_urls) == 2
    assert naruto.attribution.endswith(f"contributors, {naruto.url}, CC BY-SA 3.0")
    assert naruto.meta["infobox_type"] == "character" and "Characters" in naruto.meta["categories"]
    assert naruto.meta["infobox"]["teacher"] == ["Kakashi Hatake", "Jiraiya"]
    assert naruto.meta["revid"] == 1000 + naruto.meta["pageid"]
    assert "[[" not in naruto.text and "Team 7" in naruto.text
    assert naruto.fetched_at.endswith("Z")
    urls = {url for d in docs for url in d.image_urls}
    assert stats["images"] == len(urls) > 10
    for url in urls:
        response = requests.get(url, timeout=5)
        assert response.status_code == 200 and response.content[:4] == b"\x89PNG"


# --- crawl against a synthetic snapshot ------------------------------------------------------


def test_revisions_use_full_batches_of_50_and_never_more(synthetic_snapshot):
    with SampleSourcesServer(synthetic_snapshot) as server:
        docs, stats, _ = crawl(fandom_api_url(server.base_url), ["Things", "Others"], session(), log=lambda _: None)
        sent = [len(p["titles"].split("|")) for p in revisions_requests(server)]
    assert sent == stats["titles_per_revisions_request"] == [50, 15]  # 60 things + 5 awkward pages
    assert sorted(d.title for d in docs) == sorted([f"Thing {i:02d}" for i in range(1, 61)] + ["Shared"])
    assert stats["skipped"]["redirects"] == ["Alias", "Alias of alias", "Zed"]
    assert stats["skipped"]["disambiguation"] == ["Thing"]
    assert stats["images"] == 6  # "Missing picture.png" is referenced everywhere but does not resolve
    thing_10 = next(d for d in docs if d.title == "Thing 10")
    assert thing_10.image_urls == [f"{server.base_url}/fandom/images/Thing_10.png"]


def test_smaller_batches_are_respected(synthetic_snapshot):
    with SampleSourcesServer(synthetic_snapshot) as server:
        docs, stats, _ = crawl(fandom_api_url(server.base_url), ["Things"], session(), batch_size=7, log=lambda _: None)
        sent = [len(p["titles"].split("|")) for p in revisions_requests(server)]
    assert max(sent) == 7 and sum(sent) == 65 and sent == stats["titles_per_revisions_request"]
    # "Zed" reaches Thing 01 again from a later batch: still stored once.
    assert len(docs) == len({d.id for d in docs}) == 61


def test_max_pages_stops_listing_early(synthetic_snapshot):
    with SampleSourcesServer(synthetic_snapshot) as server:
        docs, stats, _ = crawl(fandom_api_url(server.base_url), ["Things"], session(), max_pages=5, log=lambda _: None)
        listings = [r for r in server.requests if r["params"].get("list") == "categorymembers"]
    assert stats["titles_per_revisions_request"] == [5]
    assert len(listings) == 1  # 10 members per response is already enough for 5 pages
    assert len(docs) <= 5


def test_api_errors_raise_source_error_naming_url_and_code():
    with SampleSourcesServer() as server:
        with pytest.raises(SourceError, match=r"fandom/api\.php.*invalidcategory"):
            crawl(fandom_api_url(server.base_url), ["Bad|Name"], session(), log=lambda _: None)


# --- PoliteSession ---------------------------------------------------------------------------


@pytest.fixture
def server():
    with SampleSourcesServer() as srv:
        yield srv


SITEINFO = {"action": "query", "meta": "siteinfo", "format": "json"}


def test_429_is_retried_after_retry_after_and_counted(server):
    server.inject("/fandom/api.php", "429")
    client = session()
    started = time.monotonic()
    data = client.get_json(fandom_api_url(server.base_url), SITEINFO)
    assert "general" in data["query"]
    assert time.monotonic() - started >= 0.9  # waited for Retry-After: 1
    assert [r["status"] for r in server.requests] == [429, 200]
    assert client.requests_made == 2
    assert client.bytes_received > 0


def test_503_is_retried_until_it_succeeds_or_the_budget_is_spent(server):
    server.inject("/fandom/api.php", "503", times=2)
    client = session(max_retries=2)
    assert "query" in client.get_json(fandom_api_url(server.base_url), SITEINFO)
    assert client.requests_made == 3
    server.inject("/fandom/api.php", "503", times=5)
    with pytest.raises(SourceError, match=r"127\.0\.0\.1.*HTTP 503"):
        client.get_json(fandom_api_url(server.base_url), SITEINFO)
    assert client.requests_made == 6


def test_cut_off_and_silent_responses_are_retried(server):
    server.timeout_fault_s = 1.0
    server.inject("/fandom/api.php", "truncated")
    server.inject("/fandom/api.php", "timeout")
    client = session(read_timeout_s=0.2)
    assert "query" in client.get_json(fandom_api_url(server.base_url), SITEINFO)
    assert [r["fault"] for r in server.requests] == ["truncated", "timeout", None]
    assert client.requests_made == 3


@pytest.mark.parametrize("robots", [False, True])
def test_retries_of_cut_bodies_and_server_errors_share_one_budget(server, robots):
    """A server alternating 503s and cut-off bodies must not get (max_retries + 1) squared tries;
    fetching robots.txt on the way is not one of them."""
    for _ in range(5):
        server.inject("/fandom/api.php", "503", times=3)
        server.inject("/fandom/api.php", "truncated")
    client = session(max_retries=3, respect_robots=robots)
    with pytest.raises(SourceError, match="cut off after 4 attempts"):
        client.get_json(fandom_api_url(server.base_url), SITEINFO)
    assert sum(r["path"] == "/fandom/api.php" for r in server.requests) == 4
    assert client.requests_made == 4 + robots


@pytest.mark.parametrize("fault, message", [("html", "HTML page"), ("badjson", "not valid JSON")])
def test_responses_that_are_not_json_raise_source_error_with_the_url(server, fault, message):
    server.inject("/fandom/api.php", fault)
    with pytest.raises(SourceError, match=message) as caught:
        session().get_json(fandom_api_url(server.base_url), SITEINFO)
    assert fandom_api_url(server.base_url) in str(caught.value)


def test_oversize_responses_are_refused(server):
    with pytest.raises(SourceError, match="1000-byte limit") as caught:
        session(max_response_bytes=1000).get_bytes(f"{server.base_url}/fandom/images/Naruto_Uzumaki.png")
    assert "Naruto_Uzumaki.png" in str(caught.value)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x", "/relative/path"])
def test_only_http_urls_are_fetched(url):
    client = session()
    with pytest.raises(SourceError, match="only http and https"):
        client.get_bytes(url)
    assert client.requests_made == 0


def test_secrets_in_query_strings_never_reach_messages(server):
    with pytest.raises(SourceError, match="HTTP 404") as not_found:
        session().get_json(f"{server.base_url}/nowhere", {"access_token": "s3cr3t", "q": "x"})
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SourceError) as refused:
        session(max_retries=0).get_json(f"http://user:pw@127.0.0.1:{port}/api", {"client_secret": "s3cr3t"})
    for error in (not_found.value, refused.value):
        assert "s3cr3t" not in str(error) and "[query redacted]" in str(error)
    assert ":pw@" not in str(refused.value)


def test_maxlag_error_is_waited_out_as_the_wiki_asks(tmp_path):
    with SampleSourcesServer() as server:
        server.inject("/fandom/api.php", "maxlag", times=2)
        lines: list[str] = []
        start = time.monotonic()
        docs, stats, _ = crawl(fandom_api_url(server.base_url), ["Jutsu"], session(), log=lines.append)
        assert time.monotonic() - start >= 2.0, "Retry-After: 1, twice"
        assert sum("the wiki is lagging" in line for line in lines) == 2
        assert len(docs) == 12
        assert [r["fault"] for r in server.requests[:3]] == ["maxlag", "maxlag", None]
