"""Fandom's incremental crawl: after a stored crawl, only what recentchanges names is fetched again."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from loretune.ingest.documents import corpus_hash
from loretune.ingest.fandom import crawl
from loretune.ingest.http import PoliteSession
from loretune.samples.server import SampleSourcesServer, fandom_api_url

CATEGORIES = ["Characters", "Jutsu"]


def session() -> PoliteSession:
    return PoliteSession(user_agent="loretune-tests/0", connect_timeout_s=2.0, read_timeout_s=5.0, max_retries=1,
                         backoff_s=0.01, max_response_bytes=5_000_000, respect_robots=False,
                         configured_hosts=["127.0.0.1"])  # the sample server is configured


@pytest.fixture
def wiki():
    """A server of its own: these tests edit its wiki."""
    with SampleSourcesServer() as server:
        yield server


def run(server: SampleSourcesServer, previous=None, categories=CATEGORIES, **kwargs):
    """One crawl, resuming from `previous` (an earlier run's result); returns documents, stats,
    state, the API requests it made and its log."""
    state, stored = (previous[2], previous[0]) if previous else (None, [])
    server.clear_log()
    lines: list[str] = []
    docs, stats, new_state = crawl(fandom_api_url(server.base_url), categories, session(), log=lines.append,
                                   state=state, stored=lambda: stored, **kwargs)
    api = [r["params"] for r in server.requests if r["path"].endswith("/api.php")]
    return docs, stats, new_state, api, lines


def what(request: dict) -> str:
    return request.get("list") or request.get("prop") or request.get("meta")


def test_second_run_with_nothing_changed_asks_two_questions_and_keeps_every_document(wiki):
    first = run(wiki)
    docs, stats, _, api, lines = run(wiki, first)
    assert [what(r) for r in api] == ["siteinfo", "recentchanges"]
    assert stats["mode"] == "incremental" and stats["changed_titles"] == 0
    assert corpus_hash(docs) == corpus_hash(first[0]) and len(docs) == 30
    assert any("no changes since" in line for line in lines)


def test_after_editing_two_pages_only_those_two_are_fetched(wiki):
    first = run(wiki)
    before = {d.title: d for d in first[0]}
    wiki.wiki.edit("Naruto Uzumaki", wiki.wiki.pages["Naruto Uzumaki"].content + "\nHe likes a new ramen stall.\n")
    wiki.wiki.edit("Rasengan", wiki.wiki.pages["Rasengan"].content.replace("[[Category:Jutsu]]", "") +
                   "\nIt spins faster now.\n[[Category:Jutsu]]\n")
    docs, stats, _, api, _ = run(wiki, first)

    revisions = [r for r in api if what(r) == "revisions"]
    assert len(revisions) == 1 and sorted(revisions[0]["titles"].split("|")) == ["Naruto Uzumaki", "Rasengan"]
    assert [what(r) for r in api][:3] == ["siteinfo", "recentchanges", "categories"]
    assert len(api) <= 5, "siteinfo, recentchanges, categories, revisions, imageinfo"
    after = {d.title: d for d in docs}
    assert after.keys() == before.keys()
    changed = {t for t in after if after[t].content_hash != before[t].content_hash}
    assert changed == {"Naruto Uzumaki", "Rasengan"}
    assert "new ramen stall" in after["Naruto Uzumaki"].text
    assert after["Naruto Uzumaki"].meta["revid"] > before["Naruto Uzumaki"].meta["revid"]
    assert after["Naruto Uzumaki"].image_urls == before["Naruto Uzumaki"].image_urls
    assert stats["refetched"] == ["Naruto Uzumaki", "Rasengan"]


def test_new_pages_join_only_if_in_a_configured_category_and_deleted_pages_leave(wiki):
    first = run(wiki)
    wiki.wiki.edit("Konohamaru Sarutobi", "'''Konohamaru''' is a genin of the Leaf.\n[[Category:Characters]]\n")
    wiki.wiki.edit("Ichiraku Ramen", "'''Ichiraku Ramen''' is a noodle shop.\n[[Category:Places]]\n")
    wiki.wiki.delete("Rasengan")
    docs, stats, _, api, _ = run(wiki, first)

    titles = {d.title for d in docs}
    assert "Konohamaru Sarutobi" in titles and "Rasengan" not in titles and "Ichiraku Ramen" not in titles
    assert len(docs) == 30 + 1 - 1
    revisions = [r for r in api if what(r) == "revisions"]
    assert [r["titles"] for r in revisions] == ["Konohamaru Sarutobi"], "out-of-scope pages are never fetched"
    assert stats["removed"] == ["Rasengan"]


def test_a_page_taken_out_of_every_category_is_removed(wiki):
    first = run(wiki)
    wiki.wiki.edit("Rasengan", "'''Rasengan''' is now a disambiguation-free stub.\n")
    docs, stats, _, _, _ = run(wiki, first)
    assert "Rasengan" not in {d.title for d in docs} and stats["removed"] == ["Rasengan"]


def test_many_changes_follow_recentchanges_continuation(wiki):
    first = run(wiki)
    titles = [d.title for d in first[0]]
    for round_ in range(2):  # 60 edits: more than one response's worth
        for title in titles:
            wiki.wiki.edit(title, wiki.wiki.pages[title].content + f"\nEdit {round_}.\n")
    docs, stats, _, api, _ = run(wiki, first)
    assert sum(what(r) == "recentchanges" for r in api) == 2
    assert stats["changed_titles"] == 30 and len(stats["refetched"]) == 30
    assert all("Edit 1." in d.text for d in docs)


@pytest.mark.parametrize("change, reason", [
    (lambda previous: (previous[0], previous[1], None), "no stored crawl state"),
    (lambda previous: (previous[0], previous[1], {**previous[2], "scope": "other"}), "categories, page cap, license or parser changed"),
    (lambda previous: (previous[0], previous[1], {**previous[2], "since": (datetime.now(timezone.utc) - timedelta(days=40))
                                                  .strftime("%Y-%m-%dT%H:%M:%SZ")}), "40 days old, more than 30"),
])
def test_full_crawl_when_the_state_is_missing_stale_or_for_another_scope(wiki, change, reason):
    previous = run(wiki)[:3]
    docs, stats, _, api, lines = run(wiki, change(previous))
    assert stats["mode"] == "full" and len(docs) == 30
    assert not any(what(r) == "recentchanges" for r in api)
    assert any("full crawl" in line and reason in line for line in lines), lines


def test_a_new_license_setting_is_a_full_crawl_so_no_document_keeps_the_old_one(wiki):
    first = run(wiki)
    docs, stats, _, _, _ = run(wiki, first, license="CC BY-SA 4.0")
    assert stats["mode"] == "full" and {d.license for d in docs} == {"CC BY-SA 4.0"}


def test_another_category_list_is_a_full_crawl_not_an_update(wiki):
    first = run(wiki, categories=["Characters"])
    docs, stats, _, _, _ = run(wiki, first, categories=CATEGORIES)
    assert stats["mode"] == "full" and len(docs) > len(first[0])


def test_state_resumes_a_little_before_the_crawl_began(wiki):
    """Edits saved while a crawl runs are asked about again next time, not lost between the two."""
    _, _, state, _, _ = run(wiki)
    since = datetime.strptime(state["since"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert timedelta(minutes=1) < datetime.now(timezone.utc) - since < timedelta(minutes=10)
