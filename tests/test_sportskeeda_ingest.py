"""Sportskeeda ingest against the sample server: discovery, keyword filter, metadata, clean text."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loretune.config import SportskeedaSource
from loretune.ingest.documents import Document
from loretune.ingest.http import PoliteSession, SourceError
from loretune.ingest.sportskeeda import crawl, parse_article
from loretune.samples.server import SNAPSHOT_DIR, SampleSourcesServer
from loretune.samples.sportskeeda import overrides

NARUTO_IDS = {
    "naruto-shadow-clone-technique-explained", "naruto-kakashi-hatake-teacher", "naruto-gaara-character-arc",
    "naruto-rasengan-vs-chidori", "fourth-hokage-legacy-explained",
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


def session() -> PoliteSession:
    return PoliteSession(user_agent="loretune-tests/0", connect_timeout_s=2.0, read_timeout_s=5.0,
                         max_retries=1, backoff_s=0.01, max_response_bytes=5_000_000)


def source(base: str, **changes: object) -> SportskeedaSource:
    settings = {key.rsplit(".", 1)[1]: value for key, value in overrides(base).items()}
    return SportskeedaSource(**{**settings, **changes})


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
    assert stats["discovered"] == 8  # 6 feed items + 2 sitemap-only; the 2 repeats counted once
    assert stats["kept"] == 5 and stats["filtered_out"] == 3 and stats["failed"] == []
    fetched = [r["path"] for r in requests]
    # Off-topic feed items are judged by their title and never fetched; a sitemap entry with no title
    # and an off-topic URL has to be fetched to read its headline.
    assert not any("one-piece" in path or "jujutsu" in path for path in fetched)
    assert "/sportskeeda/anime/demon-slayer-breathing-styles-ranked" in fetched
    assert len(fetched) == len(set(fetched)) == stats["requests"] == 9  # robots, feed, sitemap, 6 pages


def test_sitemap_only_article_is_kept_by_its_headline(crawled, server):
    doc = crawled[0]["fourth-hokage-legacy-explained"]
    assert doc.title == "Naruto: Minato Namikaze's legacy, explained"
    assert doc.url == f"{server.base_url}/sportskeeda/anime/fourth-hokage-legacy-explained"
    assert "Flying Thunder God Technique" in doc.text


def test_json_ld_fields_are_used(crawled, server):
    docs = crawled[0]
    images = f"{server.base_url}/sportskeeda/images"
    plain = docs["naruto-shadow-clone-technique-explained"]
    assert plain.meta == {"author": "Mira Okafor", "published": "2025-11-03T09:30:00+05:30"}
    assert plain.image_urls == [f"{images}/shadow-clones.png"]
    graph = docs["naruto-kakashi-hatake-teacher"]  # NewsArticle inside @graph, image an ImageObject
    assert graph.meta == {"author": "Daniel Reyes", "published": "2025-10-28T14:00:00+05:30"}
    assert graph.image_urls == [f"{images}/kakashi-portrait.png"]
    listed = docs["naruto-gaara-character-arc"]  # in a list after a broken block; lists of authors/images
    assert listed.title == "Naruto: Gaara's character arc explained, from monster to Kazekage"
    assert listed.meta == {"author": "Priya Nandakumar", "published": "2025-10-21T08:15:00+05:30"}
    assert listed.image_urls == [f"{images}/gaara-sand.png"]
    assert plain.source == "sportskeeda" and plain.license == SportskeedaSource().license
    assert plain.attribution == f"Sportskeeda, {server.base_url}/sportskeeda/anime/naruto-shadow-clone-technique-explained"


def test_page_without_json_ld_falls_back_to_h1_and_meta_tags(crawled, server):
    doc = crawled[0]["naruto-rasengan-vs-chidori"]
    assert doc.title == "Naruto: Rasengan vs Chidori, which technique is stronger?"
    assert doc.meta == {"author": "Tomasz Wierzbicki", "published": "2025-10-14T18:45:00+05:30"}
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
    assert stats["failed"] == [missing] and stats["kept"] == 4
    assert any(missing in line and "404" in line for line in logged)


def test_the_cap_stops_fetching(server):
    server.clear_log()
    docs, stats = crawl(source(server.base_url, max_articles=2), session(), log=lambda _: None)
    assert [doc.id for doc in docs] == ["naruto-shadow-clone-technique-explained", "naruto-kakashi-hatake-teacher"]
    assert stats["capped"] == 6 and stats["requests"] == 5  # robots, feed, sitemap, 2 pages


def test_a_failed_feed_leaves_the_sitemaps(server):
    logged: list[str] = []
    cfg = source(server.base_url, feed_url=f"{server.base_url}/sportskeeda/anime/no-such-feed")
    docs, _ = crawl(cfg, session(), log=logged.append)
    assert {doc.id for doc in docs} == {"naruto-kakashi-hatake-teacher", "fourth-hokage-legacy-explained"}
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
