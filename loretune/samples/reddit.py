"""Reddit's API as praw sees it, served from `snapshot/reddit/` by the sample sources server.

praw talks to two hosts: `reddit_url` (www.reddit.com) only for the app-only OAuth token, and
`oauth_url` (oauth.reddit.com) for everything else, with the token as a bearer header. Here they
are two path prefixes, `/reddit/www` and `/reddit/oauth`, so one loopback port serves both.

The snapshot holds one file per post, `r_<Sub>/<id>.json`, in exactly the shape of
`GET /comments/<id>` (a two-listing array: the post, then its comment tree, `more` stubs and all),
and `<id>.more.json` with the comments those stubs hide, as `/api/morechildren` returns them.
Subreddit listings are built from the posts, so the files never disagree with each other.
String values are served as recorded: preview and gallery URLs keep their `&amp;`, as Reddit's
records do, and the client is the one that must unescape them.

The one change at serve time is the image hosts: the records link `https://i.redd.it/<file>` and
`https://preview.redd.it/<file>?width=...&amp;s=...`, and this server stands in for those hosts too,
so those URLs are served rewritten to `{base}/reddit/media/<file>`, query string kept as recorded.
The files are `snapshot/reddit/media/<file>`, drawn by `loretune.samples.draw` (our own pictures),
served as a static file with an ETag like the wiki's images. The query (size, crop, signature) is
ignored, except that a URL still holding `&amp;` is refused (403), as Reddit refuses it: its
signature no longer matches. Without this, offline runs would ask a host that cannot answer.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from pathlib import Path
from typing import Any

from loretune.samples.server import Reply, _html_reply, _json_reply

MAX_LISTING_LIMIT = 100  # Reddit's cap on `limit` per listing page
TIME_FILTERS = {"hour", "day", "week", "month", "year", "all"}
MEDIA_PATH = "/reddit/media/"
MEDIA_HOSTS = ("https://i.redd.it/", "https://preview.redd.it/")  # served here as MEDIA_PATH
MEDIA_NAME = re.compile(r"[A-Za-z0-9_-]+\.png")  # a file name, nothing outside snapshot/reddit/media


def overrides(base: str) -> dict[str, Any]:
    """Config overrides pointing loretune's Reddit source at this server."""
    return {
        "sources.reddit.oauth_url": f"{base}/reddit/oauth",
        "sources.reddit.reddit_url": f"{base}/reddit/www",
        "sources.reddit.sample_credentials": True,
    }


class Site:
    """The snapshot's subreddits behind Reddit's OAuth API (read-only, app-only auth)."""

    def __init__(self, snapshot_dir: Path):
        self.root = Path(snapshot_dir) / "reddit"
        self.tokens: set[str] = set()
        self.posts: dict[str, list[Any]] = {}  # id -> the /comments/<id> reply
        self.hidden: dict[str, dict[str, dict]] = {}  # post id -> comment id -> t1 thing
        self.media = {path.name: path.read_bytes() for path in sorted((self.root / "media").glob("*.png"))}
        for path in sorted(self.root.glob("r_*/*.json")):
            post_id = path.name.split(".")[0]
            if path.name.endswith(".more.json"):
                things = json.loads(path.read_text(encoding="utf-8"))
                self.hidden[post_id] = {thing["data"]["id"]: thing for thing in things}
            else:
                self.posts[post_id] = json.loads(path.read_text(encoding="utf-8"))

    def handle(self, path: str, params: dict[str, str], headers: dict[str, str], base_url: str) -> Reply:
        headers = {name.lower(): value for name, value in headers.items()}
        if path == "/reddit/www/api/v1/access_token":
            return self._access_token(params, headers)
        if path.startswith(MEDIA_PATH):  # i.redd.it / preview.redd.it: public, no token
            return self._media(path.removeprefix(MEDIA_PATH), params)
        if not path.startswith("/reddit/oauth/"):
            return _error(404, "Not Found")
        if headers.get("authorization", "").removeprefix("bearer ") not in self.tokens:
            return _error(401, "Unauthorized")
        parts = [part for part in path.removeprefix("/reddit/oauth/").split("/") if part]
        if len(parts) == 3 and parts[0] == "r" and parts[2] in ("top", "new"):
            return _served(self._listing(parts[1], parts[2], params), base_url)
        if len(parts) >= 2 and parts[0] == "comments":
            return _served(self._comments(parts[1]), base_url)
        if parts == ["api", "morechildren"]:
            return _served(self._morechildren(params), base_url)
        return _error(404, "Not Found")

    def _media(self, name: str, params: dict[str, str]) -> Reply:
        if any(key.startswith("amp;") for key in params):  # `&amp;` left in: the signature fails, as on Reddit
            return _html_reply(403, "Forbidden", "Invalid signature.")
        data = self.media.get(name) if MEDIA_NAME.fullmatch(name) else None
        if data is None:
            return _html_reply(404, "Not Found", f"No image named {name}.")
        return Reply(200, data, "image/png", {"Cache-Control": "max-age=86400"})

    def _access_token(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        """Client-credentials grant: HTTP Basic client_id:client_secret, any non-empty pair accepted."""
        client_id, _, client_secret = _basic_auth(headers.get("authorization", ""))
        if not client_id or not client_secret:
            return _error(401, "Unauthorized")
        if params.get("grant_type") != "client_credentials":
            return _json_reply({"error": "unsupported_grant_type"})
        token = secrets.token_urlsafe(16)
        self.tokens.add(token)
        return _json_reply({"access_token": token, "token_type": "bearer", "expires_in": 86400, "scope": "*"})

    def _listing(self, subreddit: str, sort: str, params: dict[str, str]) -> Reply:
        """A page of posts, newest or highest-scored first, paginated by `after` like Reddit."""
        if params.get("t", "day") not in TIME_FILTERS:
            return _error(400, "Bad Request")
        posts = [reply[0]["data"]["children"][0] for reply in self.posts.values()
                 if reply[0]["data"]["children"][0]["data"]["subreddit"].lower() == subreddit.lower()]
        if not posts:
            return _error(404, "Not Found")
        key = "score" if sort == "top" else "created_utc"
        posts.sort(key=lambda thing: thing["data"][key], reverse=True)
        names = [thing["data"]["name"] for thing in posts]
        start = names.index(params["after"]) + 1 if params.get("after") in names else 0
        limit = min(int(params.get("limit") or 25), MAX_LISTING_LIMIT)
        page = posts[start:start + limit]
        after = page[-1]["data"]["name"] if page and start + limit < len(posts) else None
        return _json_reply({"kind": "Listing", "data": {
            "after": after, "before": None, "dist": len(page), "modhash": None, "children": page}})

    def _comments(self, post_id: str) -> Reply:
        if post_id not in self.posts:
            return _error(404, "Not Found")
        return _json_reply(self.posts[post_id])  # type: ignore[arg-type]  # a JSON array, as Reddit's

    def _morechildren(self, params: dict[str, str]) -> Reply:
        """The comments a `more` stub stands for, flat, each naming its parent (praw re-nests them)."""
        post_id = params.get("link_id", "").removeprefix("t3_")
        hidden = self.hidden.get(post_id, {})
        wanted = [cid for cid in params.get("children", "").split(",") if cid]
        things = [_flat(hidden[cid]) for cid in wanted if cid in hidden]
        return _json_reply({"json": {"errors": [], "data": {"things": things}}})


def _served(reply: Reply, base_url: str) -> Reply:
    """A JSON reply with the image hosts' URLs pointing at this server (see the module docstring)."""
    if reply.status != 200:
        return reply
    data = _rewrite_media(json.loads(reply.body), f"{base_url}{MEDIA_PATH}")
    return Reply(reply.status, json.dumps(data, ensure_ascii=False).encode("utf-8"), reply.content_type,
                 reply.headers)


def _rewrite_media(value: Any, media_base: str) -> Any:
    if isinstance(value, str):
        for host in MEDIA_HOSTS:
            if value.startswith(host):
                return media_base + value.removeprefix(host)
        return value
    if isinstance(value, dict):
        return {key: _rewrite_media(item, media_base) for key, item in value.items()}
    if isinstance(value, list):
        return [_rewrite_media(item, media_base) for item in value]
    return value


def _flat(thing: dict) -> dict:
    """morechildren answers each comment without its replies; they come as their own things."""
    data = dict(thing["data"], replies="")
    return {"kind": thing["kind"], "data": data}


def _basic_auth(header: str) -> tuple[str, str, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", "", ""
    try:
        return base64.b64decode(encoded).decode("utf-8").partition(":")
    except ValueError:
        return "", "", ""


def _error(status: int, message: str) -> Reply:
    reply = _json_reply({"message": message, "error": status})
    reply.status = status
    return reply
