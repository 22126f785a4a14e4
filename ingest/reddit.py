"""Reddit posts with their full comment trees, through praw, as documents.

praw is Reddit's maintained client: it does the OAuth dance, Reddit's rate-limit headers and its
own retries of 5xx, so this module adds only what praw leaves to us: which posts to keep, one
document per post, a bounded wait on HTTP 429, and errors that name the URL but never the secret.

Offline, praw is pointed at the sample server through its own `oauth_url` / `reddit_url` settings.
Neither praw 8 nor prawcore 4 insists on https (they take the URLs as given), so plain http on
loopback needs nothing special; two things do matter:
- prawcore *joins* API paths onto `oauth_url` (`urljoin(oauth_url, "r/Naruto/top")`), so an
  `oauth_url` with a path must end in "/" or its last segment is silently replaced; and it
  *appends* "/api/v1/access_token" to `reddit_url`, which therefore must not end in "/".
  `_praw_urls` normalises both, so the real hosts and a path-prefixed test server both work.
- praw would otherwise read `praw_*` environment variables and praw.ini (a username there would
  switch it to script auth) and ask PyPI for updates; everything is passed explicitly instead.

Posts come from the listing JSON praw already holds (`vars(submission)`): touching a missing
attribute on a praw object fetches it, one request per attribute, so nothing here does that.
"""

from __future__ import annotations

import html
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, TypeVar

import praw
import prawcore
import requests

from loretune.ingest import markdown
from loretune.ingest.documents import Document
from loretune.ingest.http import SourceError, SourceSkipped

T = TypeVar("T")
RATE_LIMIT_ATTEMPTS = 4  # tries of one request while Reddit answers 429
DEFAULT_RETRY_AFTER_S = 5.0  # when a 429 carries no usable Retry-After
MAX_RETRY_AFTER_S = 120.0  # a longer wait means "come back later", better reported than slept through
DELETED_CATEGORIES = {"deleted", "author"}  # removed_by_category when the author deleted the post
GONE_BODIES = {"[deleted]", "[removed]"}


# The offline sample server accepts any non-empty pair; these are public, not secrets.
SAMPLE_CREDENTIALS = {"REDDIT_CLIENT_ID": "loretune-sample-app", "REDDIT_CLIENT_SECRET": "loretune-sample-not-a-secret"}


@dataclass(frozen=True)
class RedditSettings:
    """What a Reddit crawl reads (config: `sources.reddit`; credentials come from `env`, never here)."""

    enabled: bool
    sample_credentials: bool  # the sample server's public test pair, for a loopback server only
    oauth_url: str
    reddit_url: str
    subreddits: tuple[str, ...]
    listings: tuple[str, ...]
    time_filter: str
    limit: int
    drop_removed: bool
    drop_nsfw: bool
    drop_stickied: bool
    license: str


def crawl(
    cfg: RedditSettings,
    user_agent: str,
    log: Callable[[str], None] = print,
    env: Mapping[str, str] = os.environ,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[Document], dict]:
    """Documents for the configured subreddits' posts, and stats (requests, posts, comments, dropped).

    Raises `SourceSkipped` without credentials and `SourceError` (URL named, secret never) on failure.
    """
    if cfg.sample_credentials:  # the sample server's own; the environment's are never sent to it
        env = {**SAMPLE_CREDENTIALS, **({"REDDIT_USER_AGENT": env["REDDIT_USER_AGENT"]}
                                        if env.get("REDDIT_USER_AGENT") else {})}
    client_id, client_secret = _credentials(env)
    session = _CountingSession()
    reddit = _connect(cfg, client_id, client_secret, env.get("REDDIT_USER_AGENT") or user_agent, session)
    calls = _Caller(session, client_secret, log, sleep)
    stats: dict[str, Any] = {"requests": 0, "posts": 0, "comments": 0, "dropped": Counter()}
    documents: list[Document] = []
    try:
        for post in _posts(reddit, cfg, calls):
            reason = _drop_reason(post, cfg)
            if reason:
                stats["dropped"][reason] += 1
                continue
            comments = calls.run(lambda: _comments(reddit, post["id"]))
            documents.append(_document(post, comments, cfg))
            stats["posts"] += 1
            stats["comments"] += sum(1 for c in comments if c["body"])
    finally:
        stats["requests"] = session.count
        stats["dropped"] = dict(stats["dropped"])
        session.close()
    log(f"reddit: {stats['posts']} posts, {stats['comments']} comments, dropped {stats['dropped']}, "
        f"{stats['requests']} requests")
    return documents, stats


def _credentials(env: Mapping[str, str]) -> tuple[str, str]:
    """App credentials from `env` (the environment, or what the caller read from a secret store),
    so they never sit in a config file or manifest."""
    client_id, client_secret = env.get("REDDIT_CLIENT_ID", ""), env.get("REDDIT_CLIENT_SECRET", "")
    missing = [name for name, value in (("REDDIT_CLIENT_ID", client_id), ("REDDIT_CLIENT_SECRET", client_secret))
               if not value]
    if missing:
        raise SourceSkipped(
            "no Reddit credentials: set REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET (and optionally "
            "REDDIT_USER_AGENT) for a Reddit 'script' or 'web' app, or name a Prefect Secret block in "
            f"sources.reddit.credentials_block; missing: {', '.join(missing)}")
    return client_id, client_secret


def _connect(cfg: RedditSettings, client_id: str, client_secret: str, user_agent: str,
             session: requests.Session) -> praw.Reddit:
    """A read-only, app-only praw client whose HTTP all goes through `session` (to count it)."""
    oauth_url, reddit_url = _praw_urls(cfg.oauth_url, cfg.reddit_url)
    return praw.Reddit(
        client_id=client_id,
        client_secret=client_secret,
        user_agent=user_agent,
        oauth_url=oauth_url,
        reddit_url=reddit_url,
        username=None,  # explicit, so praw_username / praw.ini can't turn this into script auth
        password=None,
        refresh_token=None,
        check_for_async=False,
        check_for_updates=False,
        requestor_kwargs={"session": session},
    )


def _praw_urls(oauth_url: str, reddit_url: str) -> tuple[str, str]:
    """(oauth_url ending in "/", reddit_url not): see the module docstring for why."""
    return oauth_url.rstrip("/") + "/", reddit_url.rstrip("/")


def _posts(reddit: praw.Reddit, cfg: RedditSettings, calls: _Caller) -> Iterator[dict[str, Any]]:
    """Each post of each subreddit's listings once, as the listing's own data."""
    seen: set[str] = set()
    for name in cfg.subreddits:
        subreddit = reddit.subreddit(name)
        for listing in cfg.listings:
            if listing == "top":
                fetch = lambda: list(subreddit.top(time_filter=cfg.time_filter, limit=cfg.limit))  # noqa: E731
            else:
                fetch = lambda: list(subreddit.new(limit=cfg.limit))  # noqa: E731
            for submission in calls.run(fetch):
                post = _post_data(submission)
                if post["id"] not in seen:
                    seen.add(post["id"])
                    yield post


def _post_data(submission: praw.models.Submission) -> dict[str, Any]:
    """The listing's fields, with praw's Redditor/Subreddit wrappers turned back into names."""
    data = dict(vars(submission))
    author = data.get("author")
    data["author"] = str(author) if author is not None else "[deleted]"  # praw maps "[deleted]" to None
    data["subreddit"] = str(data.get("subreddit", ""))
    return data


def _drop_reason(post: dict[str, Any], cfg: RedditSettings) -> str | None:
    """Why a post is left out ("deleted", "removed", "nsfw", "stickied"), or None to keep it."""
    category = post.get("removed_by_category")
    selftext = post.get("selftext") or ""
    if cfg.drop_removed and (category in DELETED_CATEGORIES or selftext == "[deleted]"):
        return "deleted"
    if cfg.drop_removed and (category is not None or selftext == "[removed]"):
        return "removed"
    if cfg.drop_nsfw and post.get("over_18"):
        return "nsfw"
    if cfg.drop_stickied and post.get("stickied") and post.get("distinguished") == "moderator":
        return "stickied"
    return None


def _comments(reddit: praw.Reddit, post_id: str) -> list[dict[str, Any]]:
    """Every comment, depth first, with all `more` stubs expanded, as {id, parent, body, score,
    by_author}: the dataset's answer and thread builders need the tree and the votes, not only text.

    A fresh Submission per attempt: replace_more consumes stubs as it goes, so retrying on a
    half-expanded tree could silently lose comments.
    """
    submission = reddit.submission(id=post_id)
    submission.comments.replace_more(limit=None)
    return list(_walk(submission.comments))


def _walk(forest: Any) -> Iterator[dict[str, Any]]:
    for comment in forest:
        data = vars(comment)
        body = (data.get("body") or "").strip()
        # The parent is "t1_<id>" (a comment) or "t3_<id>" (the post): top level is parent "".
        parent = data.get("parent_id") or ""
        yield {"id": data.get("id") or "", "parent": parent[3:] if parent.startswith("t1_") else "",
               "body": "" if body in GONE_BODIES else body, "score": data.get("score") or 0,
               "by_author": bool(data.get("is_submitter"))}
        yield from _walk(comment.replies)


def _document(post: dict[str, Any], comments: list[dict[str, Any]], cfg: RedditSettings) -> Document:
    """One document per post; authors stay out of the prose the model learns from, and Markdown
    becomes the prose a reader sees (`ingest/markdown.py`). The comment tree, in plain text with
    scores, is kept in meta for the dataset's builders; gone comments stay in it as empty bodies,
    so their replies keep their place."""
    url = _praw_urls(cfg.oauth_url, cfg.reddit_url)[1] + post["permalink"]
    selftext = markdown.to_text(post.get("selftext") or "")
    comments = [{**c, "body": markdown.to_text(c["body"]) if c["body"] else ""} for c in comments]
    return Document(
        source="reddit",
        id=post["id"],
        url=url,
        title=post.get("title") or "",
        text="\n\n".join(part for part in [selftext, *(c["body"] for c in comments)] if part),
        image_urls=_image_urls(post),
        license=cfg.license,
        attribution=f"r/{post['subreddit']} contributors, {url}",
        fetched_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        meta={
            "subreddit": post["subreddit"],
            "score": post.get("score"),
            "created_utc": post.get("created_utc"),
            "author": post["author"],
            "num_comments": post.get("num_comments"),
            "comments": comments,
        },
    )


def _image_urls(post: dict[str, Any]) -> list[str]:
    """Full-size images from `preview` and gallery `media_metadata`, HTML-unescaped.

    Reddit's records keep these URLs HTML-escaped (`&amp;`), and the escaped form is a different,
    signed URL that the image host refuses.
    """
    urls = [image["source"]["url"] for image in (post.get("preview") or {}).get("images", [])
            if image.get("source", {}).get("url")]
    metadata = post.get("media_metadata") or {}
    order = [item["media_id"] for item in (post.get("gallery_data") or {}).get("items", [])] or list(metadata)
    for media_id in order:
        media = metadata.get(media_id) or {}
        source = media.get("s") or {}
        if media.get("status") == "valid" and (source.get("u") or source.get("gif")):
            urls.append(source.get("u") or source["gif"])
    return list(dict.fromkeys(html.unescape(url) for url in urls))


class _CountingSession(requests.Session):
    """praw's HTTP session: counts requests on the wire (praw's retries included) and keeps the
    last URL, so an error can name the request that failed."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.last_url = ""

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.count += 1
        self.last_url = url
        return super().request(method, url, *args, **kwargs)


class _Caller:
    """Runs one praw call: waits out 429s (bounded), turns other failures into `SourceError`.

    The SourceError is raised outside the `except` block, so it carries no `__context__`: praw's
    exceptions hold the request's arguments, the token request's Basic auth (the secret) included.
    """

    def __init__(self, session: _CountingSession, secret: str, log: Callable[[str], None],
                 sleep: Callable[[float], None]):
        self.session, self.secret, self.log, self.sleep = session, secret, log, sleep

    def run(self, action: Callable[[], T]) -> T:
        reason = ""
        for attempt in range(1, RATE_LIMIT_ATTEMPTS + 1):
            wait = None
            try:
                return action()
            except prawcore.exceptions.ResponseException as exc:  # TooManyRequests is one
                if exc.response.status_code == 429:
                    wait = _retry_after(exc.response.headers.get("retry-after"))
                reason = f"{type(exc).__name__}: {exc}"
            except (prawcore.exceptions.PrawcoreException, praw.exceptions.PRAWException) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if wait is None or attempt == RATE_LIMIT_ATTEMPTS:
                break
            self.log(f"reddit: {self._url()}: rate limited (HTTP 429); retry {attempt} in {wait:g} s")
            self.sleep(wait)
        if wait is not None:
            reason = f"still rate limited (HTTP 429) after {RATE_LIMIT_ATTEMPTS} attempts"
        raise SourceError(self._url(), reason.replace(self.secret, "[redacted]"))

    def _url(self) -> str:
        return self.session.last_url.replace(self.secret, "[redacted]") or "reddit"


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait before retrying a 429, or None when it is too long to wait here."""
    try:
        seconds = float(value) if value else DEFAULT_RETRY_AFTER_S
    except ValueError:
        seconds = DEFAULT_RETRY_AFTER_S
    return max(seconds, 0.0) if seconds <= MAX_RETRY_AFTER_S else None
