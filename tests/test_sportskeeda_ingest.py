"""Sportskeeda ingest against the sample server: discovery, keyword filter, metadata, clean text."""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

import pytest

from loretune.config import SportskeedaSource
from loretune.ingest import sources, sportskeeda
from loretune.ingest.documents import Document
from loretune.ingest.http import PoliteSession, SourceError
from loretune.ingest.sportskeeda import crawl, parse_article, sitemap_candidates
from loretune.samples.server import SNAPSHOT_DIR, SampleSourcesServer
from loretune.samples.sportskeeda import overrides

ARCHIVE_ONLY = "naruto-chunin-exams-arc-revisited"  # listed only in the gzip child sitemap
NARUTO_IDS = {
    "naruto-shadow-clone-technique-explained", "naruto-kakashi-hatake-teacher", "naruto-gaara-character-arc",
    "naruto-rasengan-vs-chidori", "fourth-hokage-legacy-explained", ARCHIVE_ONLY,
}
SITEMAP = "/sportskeeda/sitemap"
ANIME_SITEMAP_PATHS = [f"/sportskeeda/anime/{slug}" for slug in (  # sitemap-anime.xml, in order
    "naruto-kakashi-hatake-teacher", "one-piece-straw-hat-crew-bonds", "fourth-hokage-legacy-explained",
    "demon-slayer-breathing-styles-ranked")]
# Extra sitemaps for the index tests, added to a copy of the snapshot: a chain of indexes one level
# deeper than allowed, and an index that lists itself and a sitemap on another host.
EXTRA_SITEMAPS = {
    "level-1": ["level-2.xml"], "level-2": ["level-3.xml"], "level-3": ["anime.xml"],
    "odd": ["odd.xml", "http://elsewhere.invalid/sportskeeda/sitemap/anime.xml", "anime.xml"],
}
OFF_TOPIC = {"one-piece-straw-hat-crew-bonds", "jujutsu-kaisen-cursed-energy-guide", "demon-slayer-breathing-styles-ranked"}
# Text that sits in the pages but is not the article: ads, "Also read", related lists, newsletter
# boxes, share bars, captions, navigation, scripts and styles.
NOISE = [
    "Advertisement", "googletag", "Also read", "You might also like", "Five anime rivalries",
    "The best training arcs", "Ten anime openings", "Related stories", "newsletter", "Never miss an episode",
    "Subscribe", "Share this article", "Image via", "Trending now", "Naruto hub", "dataLayer", "min-height",
    "Priya Nandakumar", "Sample Sportskeeda",
]


def byline(doc: Document) -> dict:
    """The document's meta without its sections, which have tests of their own."""
    return {key: value for key, value in doc.meta.items() if key != "sections"}


def session() -> PoliteSession:
    return PoliteSession(user_agent="loretune-tests/0", connect_timeout_s=2.0, read_timeout_s=5.0,
                         max_retries=1, backoff_s=0.01, max_response_bytes=5_000_000,
                         configured_hosts=["127.0.0.1"])  # the sample server is configured


def source(base: str, **changes: object) -> sportskeeda.SportskeedaSettings:
    """The settings the ingest task gives Sportskeeda for this config section."""
    settings = {key.rsplit(".", 1)[1]: value for key, value in overrides(base).items()}
    section = SportskeedaSource(**{**settings, **changes})
    return sources.settings({"sportskeeda": section.model_dump()})["sportskeeda"]


@pytest.fixture(scope="module")
def server():
    with SampleSourcesServer(port=0) as server:
        yield server


@pytest.fixture(scope="module")
def crawled(server) -> tuple[dict[str, Document], dict, list[dict]]:
    server.clear_log()
    docs, stats = crawl(source(server.base_url), session(), log=lambda _: None)
    return {doc.id: doc for doc in docs}, stats, server.requests


def test_keeps_only_articles_about_the_keywords(crawled):
    docs, stats, requests = crawled
    assert set(docs) == NARUTO_IDS
    assert stats["discovered"] == 9  # 6 feed items + 2 sitemap-only + 1 archive-only; repeats counted once
    assert stats["kept"] == 6 and stats["filtered_out"] == 3 and stats["failed"] == []
    fetched = [r["path"] for r in requests]
    # Off-topic feed items are judged by their title and never fetched; a sitemap entry with no title
    # and an off-topic URL has to be fetched to read its headline.
    assert not any("one-piece" in path or "jujutsu" in path for path in fetched)
    assert "/sportskeeda/anime/demon-slayer-breathing-styles-ranked" in fetched
    # robots, feed, sitemap index, its 2 children, 7 pages
    assert len(fetched) == len(set(fetched)) == stats["requests"] == 12


def test_sitemap_only_article_is_kept_by_its_headline(crawled, server):
    doc = crawled[0]["fourth-hokage-legacy-explained"]
    assert doc.title == "Naruto: Minato Namikaze's legacy, explained"
    assert doc.url == f"{server.base_url}/sportskeeda/anime/fourth-hokage-legacy-explained"
    assert "Flying Thunder God Technique" in doc.text


def test_json_ld_fields_are_used(crawled, server):
    docs = crawled[0]
    images = f"{server.base_url}/sportskeeda/images"
    plain = docs["naruto-shadow-clone-technique-explained"]
    assert byline(plain) == {"author": "Mira Okafor", "published": "2025-11-03T09:30:00+05:30"}
    assert plain.image_urls == [f"{images}/shadow-clones.png"]
    graph = docs["naruto-kakashi-hatake-teacher"]  # NewsArticle inside @graph, image an ImageObject
    assert byline(graph) == {"author": "Daniel Reyes", "published": "2025-10-28T14:00:00+05:30"}
    assert graph.image_urls == [f"{images}/kakashi-portrait.png"]
    listed = docs["naruto-gaara-character-arc"]  # in a list after a broken block; lists of authors/images
    assert listed.title == "Naruto: Gaara's character arc explained, from monster to Kazekage"
    assert byline(listed) == {"author": "Priya Nandakumar", "published": "2025-10-21T08:15:00+05:30"}
    assert listed.image_urls == [f"{images}/gaara-sand.png"]
    assert plain.source == "sportskeeda" and plain.license == SportskeedaSource().license
    assert plain.attribution == f"Sportskeeda, {server.base_url}/sportskeeda/anime/naruto-shadow-clone-technique-explained"


def test_page_without_json_ld_falls_back_to_h1_and_meta_tags(crawled, server):
    doc = crawled[0]["naruto-rasengan-vs-chidori"]
    assert doc.title == "Naruto: Rasengan vs Chidori, which technique is stronger?"
    assert byline(doc) == {"author": "Tomasz Wierzbicki", "published": "2025-10-14T18:45:00+05:30"}
    assert doc.image_urls == [f"{server.base_url}/sportskeeda/images/rasengan-chidori.png"]
    assert doc.text.startswith("The Rasengan and the Chidori are built on opposite ideas.")


def test_text_is_the_article_paragraphs_in_order_and_nothing_else(crawled):
    docs = crawled[0]
    for doc in docs.values():
        for noise in NOISE:
            assert noise.lower() not in doc.text.lower(), (doc.id, noise)
        assert "<" not in doc.text and "{" not in doc.text
    paragraphs = docs["naruto-shadow-clone-technique-explained"].text.split("\n\n")
    assert [p[:30] for p in paragraphs] == [
        "Ask a casual viewer to name Na", "Unlike ordinary clones, shadow", "The hidden training trick",
        "The real turning point comes d", "The trick has a price. The men", "That balance between a generou",
    ]


def test_a_missing_article_is_skipped_and_the_rest_are_kept(tmp_path: Path):
    shutil.copytree(SNAPSHOT_DIR, tmp_path, dirs_exist_ok=True)
    (tmp_path / "sportskeeda" / "anime" / "naruto-gaara-character-arc.html").unlink()
    logged: list[str] = []
    with SampleSourcesServer(snapshot_dir=tmp_path, port=0) as server:
        docs, stats = crawl(source(server.base_url), session(), log=logged.append)
        missing = f"{server.base_url}/sportskeeda/anime/naruto-gaara-character-arc"
    assert {doc.id for doc in docs} == NARUTO_IDS - {"naruto-gaara-character-arc"}
    assert stats["failed"] == [missing] and stats["kept"] == 5
    assert any(missing in line and "404" in line for line in logged)


def test_a_maintenance_page_served_with_200_is_not_stored_as_the_article(server):
    logged: list[str] = []
    server.inject("/sportskeeda/anime/naruto-rasengan-vs-chidori", "html")
    docs, stats = crawl(source(server.base_url), session(), log=logged.append)
    assert {doc.id for doc in docs} == NARUTO_IDS - {"naruto-rasengan-vs-chidori"}
    assert [url.rsplit("/", 1)[1] for url in stats["failed"]] == ["naruto-rasengan-vs-chidori"]
    assert any("not an article page" in line and "Temporarily Unavailable" in line for line in logged)


def test_an_html_page_instead_of_the_feed_is_named_as_such(server):
    logged: list[str] = []
    server.inject("/sportskeeda/anime/feed", "html")
    crawl(source(server.base_url), session(), log=logged.append)
    assert any("expected a feed, got an HTML page (Fandom - Temporarily Unavailable)" in line for line in logged)


def test_the_cap_stops_fetching(server):
    server.clear_log()
    docs, stats = crawl(source(server.base_url, max_articles=2), session(), log=lambda _: None)
    assert [doc.id for doc in docs] == ["naruto-shadow-clone-technique-explained", "naruto-kakashi-hatake-teacher"]
    assert stats["capped"] == 7 and stats["requests"] == 7  # robots, feed, index, 2 sitemaps, 2 pages


def test_a_failed_feed_leaves_the_sitemaps(server):
    logged: list[str] = []
    cfg = source(server.base_url, feed_url=f"{server.base_url}/sportskeeda/anime/no-such-feed")
    docs, _ = crawl(cfg, session(), log=logged.append)
    assert {doc.id for doc in docs} == {"naruto-kakashi-hatake-teacher", "fourth-hokage-legacy-explained", ARCHIVE_ONLY}
    assert any("no-such-feed" in line for line in logged)


def test_feed_and_all_sitemaps_failing_is_a_source_error_naming_them(server):
    base = server.base_url
    cfg = source(base, feed_url=f"{base}/sportskeeda/nofeed", sitemap_urls=[f"{base}/sportskeeda/nomap.xml"])
    with pytest.raises(SourceError) as caught:
        crawl(cfg, session(), log=lambda _: None)
    assert "/sportskeeda/nofeed" in str(caught.value) and "/sportskeeda/nomap.xml" in str(caught.value)


def test_inline_also_read_and_nested_list_items_without_markup_of_their_own():
    page = """<html><head><meta property="og:title" content="OG title"></head><body><article>
      <p>First.</p><p><b>Also Read:</b> <a href="/x">Elsewhere</a></p>
      <ul><li><p>Item <em>one</em>.</p></li></ul><div role="complementary"><p>Aside.</p></div>
    </article></body></html>"""
    article = parse_article(page, "https://example.org/anime/x")
    assert article.title == "OG title" and article.author == "" and article.image is None
    assert article.text == "First.\n\nItem one."


def test_sections_split_the_article_at_its_headings(crawled):
    sections = crawled[0]["naruto-gaara-character-arc"].meta["sections"]
    assert [s["heading"] for s in sections] == ["", "The fight that changed him"]
    assert sections[0]["text"].startswith("When Gaara first appears, he is introduced as a threat")
    assert sections[1]["text"].startswith("His battle with Naruto is the hinge of the arc.")
    assert sections[1]["text"].endswith("marches out to bring him home.")  # the ad between is not in it


def test_sections_joined_in_order_give_back_the_text_and_hold_no_noise(crawled):
    for doc in crawled[0].values():
        sections = doc.meta["sections"]
        assert sections and all(set(s) == {"heading", "text"} and s["text"] for s in sections), doc.id
        parts = [part for s in sections for part in (s["heading"], s["text"]) if part]
        assert "\n\n".join(parts) == doc.text, doc.id
        for heading in [s["heading"] for s in sections]:
            assert heading not in {"Related stories", "Trending now", "Never miss an episode"}, doc.id


def test_a_heading_with_no_text_under_it_is_not_a_section():
    page = """<html><body><article><h2>Opening</h2><p>One.</p><h2>Empty</h2><h3>Inner</h3><p>Two.</p>
      <ul><li><h4>Inside an item</h4></li></ul><p>Also read: elsewhere</p><h4>Last</h4></article></body></html>"""
    article = parse_article(page, "https://example.org/anime/x")
    assert article.sections == [{"heading": "Opening", "text": "One."},
                                {"heading": "Inner", "text": "Two.\n\nInside an item"}]
    assert article.text == "Opening\n\nOne.\n\nEmpty\n\nInner\n\nTwo.\n\nInside an item\n\nLast"


# --- sitemap indexes and gzip sitemaps --------------------------------------------------------


class CannedSession:
    """Stands in for `PoliteSession` where only the bytes matter: a gzip bomb or a broken gzip file,
    which the sample server has no reason to serve."""

    allowed_hosts: set[str] = set()

    def __init__(self, bodies: dict[str, bytes], max_response_bytes: int):
        self.bodies = bodies
        self.max_response_bytes = max_response_bytes

    def get_bytes(self, url: str) -> bytes:
        return self.bodies[url]


@pytest.fixture(scope="module")
def extra_server(tmp_path_factory):
    """The sample server over a snapshot copy with EXTRA_SITEMAPS added."""
    root = tmp_path_factory.mktemp("snapshot")
    shutil.copytree(SNAPSHOT_DIR, root, dirs_exist_ok=True)
    for name, children in EXTRA_SITEMAPS.items():
        entries = "".join(f"<sitemap><loc>{c if '//' in c else '{base}' + SITEMAP + '/' + c}</loc></sitemap>"
                          for c in children)
        (root / "sportskeeda" / f"sitemap-{name}.xml").write_text(
            f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</sitemapindex>')
    with SampleSourcesServer(snapshot_dir=root, port=0) as server:
        yield server


def test_the_sitemap_index_and_its_gzip_child_are_followed(crawled, server):
    docs, _, requests = crawled
    fetched = [r["path"] for r in requests]
    assert [p for p in fetched if p.startswith(SITEMAP)] == [
        f"{SITEMAP}/index.xml", f"{SITEMAP}/anime.xml", f"{SITEMAP}/anime-archive.xml.gz"]
    doc = docs[ARCHIVE_ONLY]  # listed nowhere but the gzip child
    assert doc.title == "Naruto: The Chunin Exams arc, revisited"
    assert byline(doc) == {"author": "Daniel Reyes", "published": "2025-08-12T09:00:00+05:30"}
    assert "Forest of Death" in doc.text
    # The child really is a gzip file (not Content-Encoding, which requests would undo on its own).
    body = session().get_bytes(f"{server.base_url}{SITEMAP}/anime-archive.xml.gz")
    assert body[:2] == b"\x1f\x8b" and b"chunin-exams" in gzip.decompress(body)


def test_an_index_of_indexes_is_followed(extra_server):
    base = extra_server.base_url
    candidates = sitemap_candidates(f"{base}{SITEMAP}/level-2.xml", session(), log=lambda _: None)
    assert [c.url for c in candidates] == [f"{base}{path}" for path in ANIME_SITEMAP_PATHS]
    assert candidates[0].title == "Naruto: 4 reasons Kakashi Hatake was the right teacher for Team 7"


def test_an_index_nested_deeper_than_the_limit_is_refused_naming_it(extra_server):
    base = extra_server.base_url
    logged: list[str] = []
    extra_server.clear_log()
    with pytest.raises(SourceError) as caught:
        sitemap_candidates(f"{base}{SITEMAP}/level-1.xml", session(), log=logged.append)
    too_deep = f"{base}{SITEMAP}/level-3.xml"
    assert f"{too_deep}: sitemap index nested more than 2 levels deep" in str(caught.value)
    assert any(too_deep in line and "nested" in line for line in logged)
    assert f"{SITEMAP}/anime.xml" not in [r["path"] for r in extra_server.requests]  # never went below it


def test_an_index_listing_itself_or_another_host_fetches_neither(extra_server):
    base = extra_server.base_url
    logged: list[str] = []
    extra_server.clear_log()
    candidates = sitemap_candidates(f"{base}{SITEMAP}/odd.xml", session(), log=logged.append)
    assert [c.url for c in candidates] == [f"{base}{path}" for path in ANIME_SITEMAP_PATHS]
    assert [r["path"] for r in extra_server.requests] == ["/robots.txt", f"{SITEMAP}/odd.xml", f"{SITEMAP}/anime.xml"]
    assert any("elsewhere.invalid" in line and "not on 127.0.0.1" in line for line in logged)


def test_child_sitemaps_over_the_cap_are_skipped_and_counted(server, monkeypatch):
    monkeypatch.setattr(sportskeeda, "MAX_CHILD_SITEMAPS", 1)
    logged: list[str] = []
    server.clear_log()
    candidates = sitemap_candidates(f"{server.base_url}{SITEMAP}/index.xml", session(), log=logged.append)
    assert [c.url for c in candidates] == [f"{server.base_url}{path}" for path in ANIME_SITEMAP_PATHS]
    assert f"{SITEMAP}/anime-archive.xml.gz" not in [r["path"] for r in server.requests]
    assert any("fetched 1 child sitemaps, skipped 1 more over the cap" in line for line in logged)


def test_a_failing_child_sitemap_is_skipped_and_the_others_still_count(server):
    logged: list[str] = []
    server.inject(f"{SITEMAP}/anime-archive.xml.gz", "503", times=10)  # more than the retries
    try:
        docs, stats = crawl(source(server.base_url), session(), log=logged.append)
    finally:
        server.clear_faults()
    assert {doc.id for doc in docs} == NARUTO_IDS - {ARCHIVE_ONLY}
    assert stats["discovered"] == 8 and stats["failed"] == []
    assert any("anime-archive.xml.gz" in line and "503" in line for line in logged)
    assert not any("listing failed" in line for line in logged), "the index itself did not fail"


def test_an_index_whose_children_all_fail_is_a_failed_listing(server):
    base = server.base_url
    cfg = source(base, feed_url=f"{base}/sportskeeda/nofeed")
    server.inject(f"{SITEMAP}/anime", "503", times=10)  # anime.xml and anime-archive.xml.gz
    try:
        with pytest.raises(SourceError) as caught:
            crawl(cfg, session(), log=lambda _: None)
    finally:
        server.clear_faults()
    message = str(caught.value)
    assert f"{SITEMAP}/index.xml: every child sitemap failed" in message
    assert f"{SITEMAP}/anime.xml" in message and f"{SITEMAP}/anime-archive.xml.gz" in message


def test_a_gzip_bomb_is_refused_without_decompressing_it_all(monkeypatch):
    url = "https://example.org/sitemap/bomb.xml.gz"
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb") as stream:
        for _ in range(50):
            stream.write(bytes(1_000_000))  # 50 MB of zeros, about 50 KB compressed
    produced = []
    read = gzip.GzipFile.read
    monkeypatch.setattr(gzip.GzipFile, "read", lambda self, size=-1: produced.append(read(self, size)) or produced[-1])
    with pytest.raises(SourceError) as caught:
        sitemap_candidates(url, CannedSession({url: packed.getvalue()}, max_response_bytes=1_000_000), log=print)
    assert str(caught.value) == f"{url}: gzip sitemap decompresses to over the 1000000-byte limit"
    assert 1_000_000 < sum(map(len, produced)) <= 1_000_001  # stopped one byte past the cap


@pytest.mark.parametrize("corrupt", [
    lambda good: good[: len(good) // 2],  # cut off
    lambda good: good[:10] + bytes(b ^ 0xFF for b in good[10:40]) + good[40:],  # damaged deflate data
    lambda good: b"\x1f\x8b" + b"this is not gzip at all, only its first two bytes are",
], ids=["truncated", "damaged", "bad-header"])
def test_a_corrupt_gzip_sitemap_is_a_source_error_naming_it(corrupt):
    url = "https://example.org/sitemap/broken.xml.gz"
    good = gzip.compress((SNAPSHOT_DIR / "sportskeeda" / "sitemap-anime.xml").read_bytes())
    with pytest.raises(SourceError) as caught:
        sitemap_candidates(url, CannedSession({url: corrupt(good)}, max_response_bytes=1_000_000), log=print)
    assert str(caught.value).startswith(f"{url}: corrupt gzip file (")
