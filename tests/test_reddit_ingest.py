"""Reddit ingest through praw against the sample server: same code as for reddit.com, other URLs."""

from __future__ import annotations

import traceback

import pyarrow.parquet as pq
import pytest

from loretune.config import HttpConfig, ImagesConfig, RedditSource
from loretune.ingest import reddit, sources
from loretune.ingest.documents import COLUMNS, write_documents
from loretune.ingest.http import PoliteSession, SourceError, SourceSkipped
from loretune.multimodal.images import check_image
from loretune.samples import reddit as sample_reddit
from loretune.samples.server import SampleSourcesServer

CANARY = "canary-Secret-7f3a9c"
ENV = {"REDDIT_CLIENT_ID": "test-client", "REDDIT_CLIENT_SECRET": CANARY}
KEPT = {"1hna02", "1hna03", "1hna04", "1hna08", "1hna09", "1hna10"}
UA = "loretune-tests/0.1 (sample server)"


@pytest.fixture(scope="module")
def server():
    with SampleSourcesServer(port=0) as srv:
        yield srv


@pytest.fixture
def srv(server):
    server.clear_log()
    server.clear_faults()
    yield server
    server.clear_faults()


def config(srv: SampleSourcesServer, **changes) -> reddit.RedditSettings:
    """The settings the ingest task gives Reddit for this config section."""
    urls = sample_reddit.overrides(srv.base_url)
    section = RedditSource(oauth_url=urls["sources.reddit.oauth_url"], reddit_url=urls["sources.reddit.reddit_url"],
                           **changes)
    return sources.settings({"reddit": section.model_dump()})["reddit"]


def crawl(srv, cfg=None, env=ENV, **kwargs):
    logs: list[str] = []
    docs, stats = reddit.crawl(cfg or config(srv), UA, log=logs.append, env=env, **kwargs)
    return {doc.id: doc for doc in docs}, stats, logs


def test_posts_come_with_full_comment_trees_and_more_stubs_expanded(srv):
    docs, stats, _ = crawl(srv)
    assert set(docs) == KEPT  # top and new list the same posts: each kept once
    text = docs["1hna02"].text
    assert text.startswith("Every time Kakashi uses the eye")
    assert "Exactly, the Purple Lightning arrives" in text  # depth 2
    assert "A gift and a burden at once" in text  # behind the `more` stub, itself a reply
    assert "He also copies a thousand techniques" in text
    assert [r["path"] for r in srv.requests].count("/reddit/oauth/api/morechildren/") == 1
    assert "[deleted]" not in docs["1hna08"].text  # a deleted comment's reply stays, its body goes
    assert "Asuma's lighter" in docs["1hna08"].text
    # Markdown reaches the documents as the prose a reader sees: link text kept, markup and URL gone
    assert docs["1hna08"].text.startswith("Shikamaru planned the whole fight before it started. He studied")
    assert "let Hidan think he was winning" in docs["1hna08"].text
    assert "He buries Hidan in the Nara forest." in docs["1hna08"].text
    for markup in ("**", "](", ">!", "!<", "https://"):
        assert markup not in docs["1hna08"].text
    assert stats["posts"] == 6 and stats["comments"] == 18
    # The tree stays in meta, with votes, for the dataset's answer and thread builders: a gone
    # comment keeps its place (empty body) so its reply still hangs under it.
    tree = {c["id"]: c for c in docs["1hna08"].meta["comments"]}
    assert tree["h0c001"]["body"] == "" and tree["h0c002"]["parent"] == "h0c001" and tree["h0c001"]["parent"] == ""
    assert tree["h0c002"]["score"] == 260 and "**" not in tree["h0c003"]["body"]
    assert [c["id"] for c in docs["1hna09"].meta["comments"]] == ["q0c001", "q0c002", "q0c003", "q0c004", "q0c005"]
    # token + 2 listings + one comments page per kept post + one morechildren
    # token, top + new, 6 comment pages, 1 morechildren. The client may count one more under load:
    # a keep-alive connection the server already closed is retried, and only one reaches it.
    assert len(srv.requests) == 1 + 2 + 6 + 1
    assert len(srv.requests) <= stats["requests"] <= len(srv.requests) + 1


def test_removed_deleted_nsfw_and_stickied_mod_posts_are_dropped_and_counted(srv):
    docs, stats, logs = crawl(srv)
    assert stats["dropped"] == {"removed": 1, "deleted": 1, "nsfw": 1, "stickied": 1}
    assert not {"1hna01", "1hna05", "1hna06", "1hna07"} & set(docs)
    fetched = {r["path"] for r in srv.requests}
    assert "/reddit/oauth/comments/1hna07/" not in fetched  # no comment trees for dropped posts
    assert "dropped" in logs[-1]

    docs, stats, _ = crawl(srv, config(srv, drop_nsfw=False, drop_stickied=False))
    assert {"1hna07", "1hna01"} <= set(docs)
    assert stats["dropped"] == {"removed": 1, "deleted": 1}


def test_gallery_and_preview_image_urls_are_unescaped(srv):
    docs, _, _ = crawl(srv)
    media = f"{srv.base_url}/reddit/media"  # the sample server stands in for preview.redd.it
    assert docs["1hna03"].image_urls == [f"{media}/leafgate01.png?width=1600&format=png&auto=webp&s=a1b2c3"]
    assert docs["1hna04"].image_urls == [
        f"{media}/sannin01.png?width=1200&format=png&auto=webp&s=222bbb",
        f"{media}/sannin02.png?width=1200&format=png&auto=webp&s=333ccc",
    ]
    assert docs["1hna02"].image_urls == []


def test_the_posts_images_are_served_by_the_sample_server_and_are_valid_pictures(srv):
    docs, _, _ = crawl(srv)
    urls = [url for doc in docs.values() for url in doc.image_urls]
    assert len(urls) == 3
    session = PoliteSession(**HttpConfig(min_interval_s=0.0, max_retries=0).model_dump(),
                            configured_hosts=["127.0.0.1"])  # the sample server is configured
    for url in urls:
        assert check_image(session.get_bytes(url), max_bytes=ImagesConfig().max_bytes,
                           max_pixels=ImagesConfig().max_pixels).format == "PNG"
    fetched = [r for r in srv.requests if r["path"].startswith("/reddit/media/")]
    assert [r["status"] for r in fetched] == [200, 200, 200]
    escaped = urls[0].replace("&", "&amp;")  # as recorded: Reddit refuses it, and so does this server
    with pytest.raises(SourceError, match="403"):
        session.get_bytes(escaped)


def test_documents_have_the_columns_and_meta(srv, tmp_path):
    docs, _, _ = crawl(srv)
    doc = docs["1hna02"]
    assert doc.source == "reddit"
    assert doc.url == f"{srv.base_url}/reddit/www/r/Naruto/comments/1hna02/kakashis_sharingan_cost_him_more_than_chakra/"
    assert doc.title == "Kakashi's Sharingan cost him more than chakra"
    meta = {k: v for k, v in doc.meta.items() if k != "comments"}
    assert meta == {"subreddit": "Naruto", "score": 2410, "created_utc": 1764655200.0,
                    "author": "copywheel_fan", "num_comments": 7}
    assert doc.meta["comments"][0] == {"id": "k0c001", "parent": "", "score": 640, "by_author": False,
                                       "body": "That is also why his stamina looks so low in the early fights; "
                                               "the eye drains him constantly."}
    assert doc.attribution == f"r/Naruto contributors, {doc.url}"
    assert "copywheel_fan" not in doc.text and "scroll_keeper" not in doc.text  # authors only in meta
    assert doc.license and doc.fetched_at.endswith("+00:00")
    write_documents(docs.values(), tmp_path / "d.parquet")
    table = pq.read_table(tmp_path / "d.parquet")
    assert table.column_names == COLUMNS and table.num_rows == 6


def test_without_credentials_reddit_is_skipped_with_a_clear_message(srv):
    with pytest.raises(SourceSkipped, match="no Reddit credentials: set REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET"):
        crawl(srv, env={})
    with pytest.raises(SourceSkipped, match="missing: REDDIT_CLIENT_SECRET"):
        crawl(srv, env={"REDDIT_CLIENT_ID": "only-the-id"})
    assert srv.requests == []


@pytest.mark.parametrize("prefix", ["/reddit/oauth/r/Naruto/top", "/reddit/www/api/v1/access_token"])
def test_429_is_retried_after_its_retry_after(srv, prefix):
    srv.inject(prefix, "429")
    waits: list[float] = []
    docs, stats, logs = crawl(srv, sleep=waits.append)
    assert set(docs) == KEPT
    assert waits == [1.0]  # the server's Retry-After
    assert any("rate limited (HTTP 429)" in line and prefix in line for line in logs)
    assert [r["fault"] for r in srv.requests].count("429") == 1
    assert len(srv.requests) == 11  # the 10 of a clean crawl plus the one that got the 429
    assert 11 <= stats["requests"] <= 12  # see the note on keep-alive retries above


def test_endless_429_gives_up_with_an_error_naming_the_url(srv):
    srv.inject("/reddit/oauth/r/Naruto/top", "429", times=10)
    waits: list[float] = []
    with pytest.raises(SourceError, match=r"/reddit/oauth/r/Naruto/top.*still rate limited"):
        crawl(srv, sleep=waits.append)
    assert len(waits) == reddit.RATE_LIMIT_ATTEMPTS - 1


def test_the_client_secret_never_appears_in_logs_errors_or_results(srv, capsys):
    seen: list[str] = []
    with pytest.raises(SourceError) as caught:  # the token request carried the secret, then a 404
        crawl(srv, config(srv, subreddits=["NoSuchSub"]))
    error = caught.value
    assert "/reddit/oauth/r/NoSuchSub/top" in str(error) and "404" in str(error)
    assert error.__context__ is None and error.__cause__ is None  # praw's exception held the auth
    seen += [str(error), repr(error), "".join(traceback.format_exception(error))]

    srv.inject("/reddit/www/api/v1/access_token", "503", times=1)  # a failed token request
    with pytest.raises(SourceError) as caught:
        crawl(srv)
    seen += [str(caught.value), "".join(traceback.format_exception(caught.value))]

    docs, stats, logs = crawl(srv)
    seen += logs + [repr(list(docs.values())), repr(stats), *capsys.readouterr()]
    assert docs and seen
    assert not [text for text in seen if CANARY in text]


def test_sample_mode_brings_its_own_credentials_and_never_sends_the_environments(srv, monkeypatch):
    sent = []
    connect = reddit._connect
    monkeypatch.setattr(reddit, "_connect", lambda cfg, client_id, secret, *a: sent.append((client_id, secret))
                        or connect(cfg, client_id, secret, *a))
    docs, stats, _ = crawl(srv, config(srv, sample_credentials=True), env={"REDDIT_CLIENT_SECRET": "real-5ecret"})
    assert set(docs) == KEPT
    assert sent == [(reddit.SAMPLE_CREDENTIALS["REDDIT_CLIENT_ID"], reddit.SAMPLE_CREDENTIALS["REDDIT_CLIENT_SECRET"])]
    with pytest.raises(ValueError, match="sample server only"):
        RedditSource(sample_credentials=True)  # the real site never gets them

