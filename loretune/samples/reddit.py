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
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

from loretune.samples.server import Reply, _json_reply

MAX_LISTING_LIMIT = 100  # Reddit's cap on `limit` per listing page
TIME_FILTERS = {"hour", "day", "week", "month", "year", "all"}


def overrides(base: str) -> dict[str, Any]:
    """Config overrides pointing loretune's Reddit source at this server."""
    return {
        "sources.reddit.oauth_url": f"{base}/reddit/oauth",
        "sources.reddit.reddit_url": f"{base}/reddit/www",
    }


class Site:
    """The snapshot's subreddits behind Reddit's OAuth API (read-only, app-only auth)."""

    def __init__(self, snapshot_dir: Path):
        self.root = Path(snapshot_dir) / "reddit"
        self.tokens: set[str] = set()
        self.posts: dict[str, list[Any]] = {}  # id -> the /comments/<id> reply
        self.hidden: dict[str, dict[str, dict]] = {}  # post id -> comment id -> t1 thing
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
        if not path.startswith("/reddit/oauth/"):
            return _error(404, "Not Found")
        if headers.get("authorization", "").removeprefix("bearer ") not in self.tokens:
            return _error(401, "Unauthorized")
        parts = [part for part in path.removeprefix("/reddit/oauth/").split("/") if part]
        if len(parts) == 3 and parts[0] == "r" and parts[2] in ("top", "new"):
            return self._listing(parts[1], parts[2], params)
        if len(parts) >= 2 and parts[0] == "comments":
            return self._comments(parts[1])
        if parts == ["api", "morechildren"]:
            return self._morechildren(params)
        return _error(404, "Not Found")

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
