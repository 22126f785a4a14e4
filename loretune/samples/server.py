"""The offline sample sources server: a loopback HTTP server that answers like the real sources.

The machines that build and test loretune have no internet, so the scrapers run against this server
with exactly the code they use against the real sites; only base URLs differ (`sample_overrides`).
It serves the recorded snapshot under `snapshot/` in the shapes the real APIs use (MediaWiki's
action API for Fandom, including `list=recentchanges` after `Wiki.edit` / `Wiki.delete`), answers
static files with an ETag and a 304 to a matching If-None-Match, and can inject faults (429, 503, timeouts, truncated bodies, bad
JSON, HTML error pages) so reliability is tested without waiting for the internet to misbehave.

The MediaWiki emulation deliberately parses the snapshot with a few regular expressions rather
than the ingest code's parser: a bug shared by server and client would hide itself in the tests.

    python -m loretune.samples.server --port 8765
"""

from __future__ import annotations

import argparse
import hashlib
import html
import ipaddress
import json
import mimetypes
import re
import signal
import struct
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

SNAPSHOT_DIR = Path(__file__).parent / "snapshot"
FAULTS = ("429", "503", "timeout", "truncated", "badjson", "html", "offsite", "maxlag")
REPLY_FAULTS = {"429", "503", "html", "offsite", "maxlag"}  # answered instead of the real reply
TIMESTAMP = "2026-01-01T00:00:00Z"  # every snapshot revision's; fixed so responses are reproducible
CATEGORY_PAGE_LIMIT = 10  # category members per response whatever cmlimit asks: ~30 pages continue
TITLES_LIMIT = 50  # the real API's limit for titles=... without apihighlimits
DEFAULT_SITENAME = "Sample Wiki"  # unless snapshot/fandom/siteinfo.json says otherwise
LEGACY_SLOTS_WARNING = (
    'Because "rvslots" was not specified, a legacy format has been used for the output. '
    "This format is deprecated, and in the future the new format will always be used."
)

CATEGORY_LINK = re.compile(r"\[\[\s*category\s*:\s*([^\]|]+)", re.IGNORECASE)
REDIRECT = re.compile(r"^\s*#REDIRECT\s*:?\s*\[\[([^\]|]+)\]\]", re.IGNORECASE)
NAMESPACES = {"file": ("File", 6), "image": ("File", 6), "category": ("Category", 14)}
ILLEGAL_TITLE = re.compile(r"[\[\]{}<>|#]")
KNOWN_PARAMS = {
    "action", "format", "formatversion", "maxlag", "continue", "utf8", "origin", "list", "prop",
    "meta", "titles", "redirects", "cmtitle", "cmlimit", "cmtype", "cmcontinue", "rvprop", "rvslots",
    "iiprop", "siprop", "clcategories", "cllimit", "rcstart", "rcend", "rcdir", "rcnamespace", "rcprop",
    "rctype", "rclimit", "rccontinue",
}
RC_LIMIT = 50  # recent changes per response whatever rclimit asks, so continuation gets exercised
# Paths whose answers are computed per request, as the real APIs' are: no ETag, never a 304.
# (Reddit's images, /reddit/media/, are static files and get one.)
DYNAMIC_PATHS = ("/fandom/api.php", "/reddit/www", "/reddit/oauth")


def fandom_api_url(base: str) -> str:
    return f"{base}/fandom/api.php"


# The other sources' sample sites, each in its own module with a `Site(snapshot_dir)` class
# (`.handle(path, params, headers, base_url) -> Reply`) and `overrides(base) -> dict`.
SITE_MODULES = {
    "/reddit": "loretune.samples.reddit",
    "/youtube": "loretune.samples.youtube",
    "/sportskeeda": "loretune.samples.sportskeeda",
}


def _site_modules() -> dict[str, Any]:
    """Imported on use, not at module load: the site modules import this one for `Reply`."""
    import importlib

    return {prefix: importlib.import_module(name) for prefix, name in SITE_MODULES.items()}


def sample_overrides(base: str) -> dict[str, Any]:
    """Config overrides (dotted keys, as for `--set`) that point loretune at this server."""
    # Loopback needs no politeness interval; the real sites get the config's (1 s by default).
    overrides: dict[str, Any] = {"sources.fandom.api_url": fandom_api_url(base), "http.min_interval_s": 0.0}
    for module in _site_modules().values():
        overrides.update(module.overrides(base))
    return overrides


def is_serving(base: str, timeout_s: float = 1.0) -> bool:
    """Whether a sample sources server already answers at `base` (e.g. the demo's)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{fandom_api_url(base)}?action=query&meta=siteinfo&format=json",
                                    timeout=timeout_s) as reply:
            return reply.status == 200
    except OSError:
        return False


class SampleSourcesServer:
    """Serves the snapshot on a loopback port, in a daemon thread, and logs every request."""

    def __init__(self, snapshot_dir: Path | None = None, host: str = "127.0.0.1", port: int = 0):
        if not _is_loopback(host):
            raise ValueError(f"host {host!r}: the sample server binds to IPv4 loopback only, e.g. 127.0.0.1")
        self.host, self.port = host, port
        self.snapshot_dir = Path(snapshot_dir or SNAPSHOT_DIR)
        self.wiki = Wiki(self.snapshot_dir / "fandom")
        self.sites = {prefix: module.Site(self.snapshot_dir) for prefix, module in _site_modules().items()}
        self.timeout_fault_s = 3.0  # how long a "timeout" fault stays silent before hanging up
        self.base_url = ""
        self._lock = threading.Lock()
        self._log: list[dict[str, Any]] = []
        self._faults: list[list[Any]] = []  # [path prefix, fault, times left]
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Start serving; returns the base URL, e.g. http://127.0.0.1:40123."""
        if self._httpd is not None:
            raise RuntimeError("the sample server is already running")
        self._httpd = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.app = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://{self.host}:{self.port}"
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a "timeout" fault
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> SampleSourcesServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Requests served so far: method, path, params, status (None if hung up), fault, body bytes."""
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def inject(self, path_prefix: str, fault: str, times: int = 1) -> None:
        """Make the next `times` requests whose path starts with `path_prefix` fail with `fault`."""
        if fault not in FAULTS:
            raise ValueError(f"fault {fault!r}: expected one of {', '.join(FAULTS)}")
        if times < 1 or not path_prefix.startswith("/"):
            raise ValueError("inject needs times >= 1 and a path prefix starting with '/'")
        with self._lock:
            self._faults.append([path_prefix, fault, times])

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, path: str) -> str | None:
        with self._lock:
            for entry in self._faults:
                if path.startswith(entry[0]) and entry[2] > 0:
                    entry[2] -= 1
                    return entry[1]
        return None

    def _record(self, path: str, params: dict[str, str], status: int | None, fault: str | None,
                size: int = 0, at: float | None = None) -> None:
        with self._lock:
            self._log.append(
                {"method": "GET", "path": path, "params": params, "status": status, "fault": fault, "bytes": size,
                 # When the request arrived, not when its reply was ready: politeness tests read the gaps,
                 # and a reply slow to route on a busy machine would otherwise close the gap to the next.
                 "at": time.monotonic() if at is None else at}
            )


# --- HTTP --------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "loretune-sample/1"
    timeout = 30  # idle keep-alive connections give up their thread after this

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the request log is `SampleSourcesServer.requests`; stderr noise helps nobody

    def do_GET(self) -> None:  # noqa: N802
        arrived = time.monotonic()
        app: SampleSourcesServer = self.server.app  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))  # PHP keeps the last of a repeat
        fault = app._take_fault(url.path)
        if fault == "timeout":
            app._record(url.path, params, None, fault, at=arrived)
            app._stopping.wait(app.timeout_fault_s)
            self.close_connection = True
            return
        try:
            reply = self._fault_reply(fault) if fault in REPLY_FAULTS else self._route(app, url.path, params)
        except Exception as exc:  # a bug here should look like a broken server, not a hung one
            traceback.print_exc()
            reply = _html_reply(500, "Internal Server Error", f"{type(exc).__name__}: {exc}")
        if fault == "badjson":  # well delivered, but not JSON
            reply = Reply(200, reply.body[: max(1, len(reply.body) // 2)], "application/json; charset=utf-8", {})
        elif reply.status == 200 and not url.path.startswith(DYNAMIC_PATHS):
            reply = _conditional(reply, self.headers.get("If-None-Match"))
        app._record(url.path, params, reply.status, fault, len(reply.body), at=arrived)
        self._send(reply, truncate=fault == "truncated")

    def do_POST(self) -> None:  # noqa: N802
        """Served as a GET whose query also holds the urlencoded body: praw POSTs for its OAuth
        token and for /api/morechildren, and neither needs more than the form fields."""
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
        url = urlsplit(self.path)
        self.path = url._replace(query="&".join(part for part in (url.query, body) if part)).geturl()
        self.do_GET()

    def _route(self, app: SampleSourcesServer, path: str, params: dict[str, str]) -> Reply:
        if path == "/robots.txt":
            robots = app.snapshot_dir / "robots.txt"
            if not robots.exists():  # 404: crawlers may fetch everything (RFC 9309)
                return _html_reply(404, "Not Found", "No robots.txt here.")
            return Reply(200, robots.read_bytes(), "text/plain; charset=utf-8", {})
        if path == "/fandom/api.php":
            return app.wiki.api(params, app.base_url)
        if path.startswith("/fandom/images/"):
            name = unquote(path.removeprefix("/fandom/images/"))
            return app.wiki.image(name)
        if path.startswith("/fandom/wiki/"):
            return app.wiki.article(unquote(path.removeprefix("/fandom/wiki/")))
        for prefix, site in app.sites.items():
            if path == prefix or path.startswith(prefix + "/"):
                return site.handle(path, params, dict(self.headers), app.base_url)
        return _html_reply(404, "Not Found", f"No sample source at {path}.")

    def _fault_reply(self, fault: str) -> Reply:
        if fault == "429":
            reply = _html_reply(429, "Too Many Requests", "Slow down.")
            reply.headers["Retry-After"] = "1"
            return reply
        if fault == "503":
            return _html_reply(503, "Service Unavailable", "Our servers are busy; try again later.")
        if fault == "maxlag":  # MediaWiki answers a lagging replica with 200 + error + Retry-After
            return _json_reply({"error": {"code": "maxlag", "info": "Waiting for a replica: 7 seconds lagged.",
                                          "lag": 7, "type": "db"}}, headers={"Retry-After": "1"})
        if fault == "offsite":  # another loopback address: refused by host, never connected to
            port = self.server.server_address[1]  # type: ignore[attr-defined]
            return Reply(302, b"", "text/html", {"Location": f"http://127.0.0.2:{port}{self.path}"})
        return _html_reply(200, "Fandom - Temporarily Unavailable", "We are doing maintenance.")

    def _send(self, reply: Reply, truncate: bool = False) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body[: len(reply.body) // 2] if truncate else reply.body)
        if truncate:
            self.wfile.flush()
            self.close_connection = True


def _conditional(reply: Reply, if_none_match: str | None) -> Reply:
    """A static file's reply with an ETag (a hash of the body, as a CDN would give), or a bodiless
    304 when the client already holds that version."""
    etag = reply.headers.get("ETag") or f'"{hashlib.sha1(reply.body).hexdigest()[:20]}"'
    if if_none_match and etag in [tag.strip() for tag in if_none_match.split(",")]:
        return Reply(304, b"", reply.content_type, {"ETag": etag})
    return Reply(reply.status, reply.body, reply.content_type, {**reply.headers, "ETag": etag})


def _json_reply(data: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    body = json.dumps(data, ensure_ascii=False).encode("utf-8")
    return Reply(200, body, "application/json; charset=utf-8", headers or {})


def _html_reply(status: int, title: str, text: str) -> Reply:
    return Reply(status, _html_page(title, f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"),
                 "text/html; charset=utf-8", {})


def _html_page(title: str, body_html: str) -> bytes:
    page = f"<!DOCTYPE html><html><head><title>{html.escape(title)}</title></head><body>{body_html}</body></html>"
    return page.encode("utf-8")


# --- MediaWiki ---------------------------------------------------------------------------------


@dataclass
class Page:
    title: str
    pageid: int
    revid: int
    content: str
    categories: list[str]
    redirect: str | None
    timestamp: str = TIMESTAMP


@dataclass
class Change:
    """One row of the wiki's recentchanges table."""

    rcid: int
    type: str  # edit | new | log
    title: str
    pageid: int
    revid: int
    old_revid: int
    timestamp: str
    logtype: str | None = None


@dataclass
class File:
    title: str  # "File:X.png"
    path: Path
    data: bytes
    sha1: str
    width: int
    height: int
    mime: str


class ApiError(Exception):
    def __init__(self, code: str, info: str):
        super().__init__(info)
        self.code, self.info = code, info


class Wiki:
    """The snapshot's wiki as MediaWiki's action API presents it (the parts loretune uses)."""

    def __init__(self, root: Path):
        pages_dir, images_dir = root / "pages", root / "images"
        if not pages_dir.is_dir():
            raise FileNotFoundError(f"{pages_dir}: no snapshot pages")
        paths = {normalize_title(path.stem): path for path in pages_dir.glob("*.wiki")}
        self.pages: dict[str, Page] = {}
        for pageid, title in enumerate(sorted(paths), start=1):  # sorted titles -> stable ids
            self.pages[title] = _page(title, pageid, 1000 + pageid, paths[title].read_text(encoding="utf-8"))
        # The snapshot's own revisions are older than the wiki keeps recent changes for; only edits
        # made on this server (`edit`, `delete`) appear in list=recentchanges.
        self.changes: list[Change] = []
        self._edit_lock = threading.Lock()
        self.files: dict[str, File] = {}
        for path in sorted(images_dir.glob("*")) if images_dir.is_dir() else []:
            data = path.read_bytes()
            width, height = _png_size(data)
            title = "File:" + normalize_title(path.name)
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            sha1 = hashlib.sha1(data).hexdigest()
            self.files[title] = File(title, path, data, sha1, width, height, mime)
        siteinfo = root / "siteinfo.json"
        self.sitename = (
            json.loads(siteinfo.read_text(encoding="utf-8")).get("sitename", DEFAULT_SITENAME)
            if siteinfo.is_file()
            else DEFAULT_SITENAME
        )

    # - editing, as a wiki's users would -

    def edit(self, title: str, content: str, timestamp: str | None = None) -> Page:
        """Save a new revision of `title` (creating the page if needed), logged in recentchanges."""
        title = normalize_title(title)
        with self._edit_lock:
            when = timestamp or _now()
            old = self.pages.get(title)
            revid = self._next_revid()
            pageid = old.pageid if old else max((p.pageid for p in self.pages.values()), default=0) + 1
            page = _page(title, pageid, revid, content, when)
            self.pages[title] = page
            self._log_change("edit" if old else "new", page, old.revid if old else 0, when)
            return page

    def delete(self, title: str, timestamp: str | None = None) -> None:
        """Delete `title`: it becomes missing, and recentchanges gets a delete log entry."""
        title = normalize_title(title)
        with self._edit_lock:
            page = self.pages.pop(title, None)
            if page is None:
                raise KeyError(f"no page {title!r} to delete")
            self._log_change("log", page, page.revid, timestamp or _now(), logtype="delete", revid=0)

    def _next_revid(self) -> int:
        return max([p.revid for p in self.pages.values()] + [c.revid for c in self.changes], default=1000) + 1

    def _log_change(self, kind: str, page: Page, old_revid: int, when: str, logtype: str | None = None,
                    revid: int | None = None) -> None:
        self.changes.append(Change(len(self.changes) + 1, kind, page.title, page.pageid,
                                   page.revid if revid is None else revid, old_revid, when, logtype))

    # - endpoints -

    def api(self, params: dict[str, str], base: str) -> Reply:
        """One api.php request; errors are HTTP 200 with an "error" object, as MediaWiki does."""
        v2 = params.get("formatversion", "1") in ("2", "latest")
        try:
            data = self._api(params, base, v2)
        except ApiError as exc:
            error = {"code": exc.code, "info": exc.info}
            error["docref" if v2 else "*"] = f"See {base}/fandom/api.php for API usage."
            return _json_reply(
                _v1({"error": error, "servedby": "loretune-sample"}, v2),
                {"MediaWiki-API-Error": exc.code},
            )
        if params.get("format") in (None, "jsonfm"):  # MediaWiki's default: JSON pretty-printed in HTML
            pretty = html.escape(json.dumps(_v1(data, v2), indent=4, ensure_ascii=False))
            page = _html_page("MediaWiki API result", f"<pre>{pretty}</pre>")
            return Reply(200, page, "text/html; charset=utf-8", {})
        return _json_reply(_v1(data, v2))

    def image(self, name: str) -> Reply:
        """The file, tagged with its sha1 as the wiki's CDN does (the 304 is `_conditional`'s)."""
        file = self.files.get("File:" + normalize_title(name))
        if file is None:
            return _html_reply(404, "Not Found", f"No image named {name}.")
        return Reply(200, file.data, file.mime, {"ETag": f'"{file.sha1}"', "Cache-Control": "max-age=86400"})

    def article(self, name: str) -> Reply:
        """A bare article view, so document and description URLs resolve."""
        title = normalize_title(name)
        page = self.pages.get(title)
        if page is None and title not in self.files:
            return _html_reply(404, title, "There is currently no text in this page.")
        return _html_reply(200, title, page.content if page else title)

    # - action=query -

    def _api(self, params: dict[str, str], base: str, v2: bool) -> dict[str, Any]:
        if params.get("format", "json") not in ("json", "jsonfm"):
            raise ApiError("badvalue", f'Unrecognized value for parameter "format": {params["format"]}.')
        version = params.get("formatversion", "1")
        if version not in ("1", "2", "latest"):
            raise ApiError("badvalue", f'Unrecognized value for parameter "formatversion": {version}.')
        maxlag = params.get("maxlag", "0")  # accepted and honoured trivially: the snapshot never lags
        if not re.fullmatch(r"-?\d+", maxlag):
            raise ApiError("badinteger", f'Invalid value "{maxlag}" for integer parameter "maxlag".')
        action = params.get("action", "help")
        if action != "query":
            raise ApiError("badvalue", f'Unrecognized value for parameter "action": {action}.')
        warnings: dict[str, list[str]] = {}
        unknown = sorted(set(params) - KNOWN_PARAMS)
        if unknown:
            plural = "s" if len(unknown) > 1 else ""
            warnings["main"] = [f"Unrecognized parameter{plural}: {', '.join(unknown)}."]

        data: dict[str, Any] = {"batchcomplete": True}
        query: dict[str, Any] = {}
        lists = _values(params, "list", {"categorymembers", "recentchanges"})
        props = _values(params, "prop", {"revisions", "imageinfo", "categories"})
        metas = _values(params, "meta", {"siteinfo"})
        if "categorymembers" in lists:
            members, cont = self._categorymembers(params)
            query["categorymembers"] = members
            if cont:
                data["continue"] = {"cmcontinue": cont, "continue": "-||"}
        if "recentchanges" in lists:
            changes, cont = self._recentchanges(params)
            query["recentchanges"] = changes
            if cont:
                data["continue"] = {"rccontinue": cont, "continue": "-||"}
        if "siteinfo" in metas:
            query["general"] = self._siteinfo(base)
        if "titles" in params:
            query.update(self._pages(params, props, base, warnings))
        if warnings:
            data["warnings"] = {module: {"warnings": "\n".join(dict.fromkeys(texts))} for module, texts in warnings.items()}
        if query:
            data["query"] = query
        return data

    def _categorymembers(self, params: dict[str, str]) -> tuple[list[dict[str, Any]], str | None]:
        """One page of members, ordered by (sort key, pageid), and the cmcontinue for the next."""
        if "cmtitle" not in params:
            raise ApiError("invalidparammix", 'One of the parameters "cmtitle" and "cmpageid" is required.')
        namespace, category = _split_namespace(normalize_title(params["cmtitle"]))
        if namespace != 14 or not category or ILLEGAL_TITLE.search(category):
            raise ApiError("invalidcategory", "The category name you entered is not valid.")
        types = _multi(params.get("cmtype", "page|subcat|file"))
        if set(types) - {"page", "subcat", "file"}:
            raise ApiError("badvalue", f'Unrecognized value for parameter "cmtype": {types[0]}.')
        raw_limit = params.get("cmlimit", "10")
        if raw_limit != "max" and not raw_limit.isdigit():
            raise ApiError("badinteger", f'Invalid value "{raw_limit}" for integer parameter "cmlimit".')
        limit = CATEGORY_PAGE_LIMIT if raw_limit == "max" else min(max(1, int(raw_limit)), CATEGORY_PAGE_LIMIT)
        members = sorted(
            (_sortkey(page.title), page.pageid, page.title)
            for page in self.pages.values()
            if category in page.categories and "page" in types
        )
        start = 0
        if "cmcontinue" in params:
            match = re.fullmatch(r"page\|([0-9A-F]*)\|(\d+)", params["cmcontinue"])
            if not match:
                raise ApiError(
                    "badcontinue",
                    "Invalid continue param. You should pass the original value returned by the previous query.",
                )
            resume = (match.group(1), int(match.group(2)))
            start = next((i for i, m in enumerate(members) if (m[0], m[1]) >= resume), len(members))
        chunk = members[start : start + limit]
        rest = members[start + limit :]
        cont = f"page|{rest[0][0]}|{rest[0][1]}" if rest else None
        return [{"pageid": pid, "ns": 0, "title": title} for _, pid, title in chunk], cont

    def _recentchanges(self, params: dict[str, str]) -> tuple[list[dict[str, Any]], str | None]:
        """Changes between rcstart and rcend, newest first unless rcdir=newer, as MediaWiki lists them.

        With rcdir=older (the default) rcstart is the newer bound; with rcdir=newer it is the older.
        """
        newer = params.get("rcdir", "older") == "newer"
        start, end = (_mw_time(params[k]) if k in params else None for k in ("rcstart", "rcend"))
        low, high = (start, end) if newer else (end, start)
        namespaces = {int(n) for n in _multi(params.get("rcnamespace", ""))}
        types = set(_multi(params.get("rctype", "edit|new|log|categorize")))
        rcprop = set(_multi(params.get("rcprop", "title|timestamp|ids")))
        with self._edit_lock:
            rows = [c for c in self.changes if c.type in types
                    and (low is None or c.timestamp >= low) and (high is None or c.timestamp <= high)
                    and (not namespaces or 0 in namespaces)]
        rows.sort(key=lambda c: (c.timestamp, c.rcid), reverse=not newer)
        if "rccontinue" in params:
            when, _, rcid = params["rccontinue"].partition("|")
            if not rcid.isdigit():
                raise ApiError("badcontinue", "Invalid continue param. You should pass the original value "
                                              "returned by the previous query.")
            resume = (_mw_time(when), int(rcid))
            rows = [c for c in rows if ((c.timestamp, c.rcid) >= resume if newer else (c.timestamp, c.rcid) <= resume)]
        asked = params.get("rclimit", "10")
        limit = min(int(asked), RC_LIMIT) if asked.isdigit() else RC_LIMIT  # "max" included
        chunk, rest = rows[:limit], rows[limit:]
        cont = f"{_ts_mw(rest[0].timestamp)}|{rest[0].rcid}" if rest else None
        return [_rc_row(c, rcprop) for c in chunk], cont

    def _siteinfo(self, base: str) -> dict[str, Any]:
        return {
            "mainpage": "Main Page",
            "base": f"{base}/fandom/wiki/Main_Page",
            "sitename": self.sitename,
            "generator": "MediaWiki 1.39.7",
            "lang": "en",
            "server": base,
            "servername": urlsplit(base).hostname,
            "scriptpath": "/fandom",
            "articlepath": "/fandom/wiki/$1",
            "time": _now(),
        }

    def _pages(
        self, params: dict[str, str], props: list[str], base: str, warnings: dict[str, list[str]]
    ) -> dict[str, Any]:
        """titles=... resolved as MediaWiki does: normalise, follow redirects once, then describe."""
        titles = _multi(params["titles"])
        if len(titles) > TITLES_LIMIT:
            warnings.setdefault("query", []).append(
                f'Too many values supplied for parameter "titles". The limit is {TITLES_LIMIT}.'
            )
            titles = titles[:TITLES_LIMIT]
        normalized, redirects, pages, seen = [], [], [], set()
        for raw in titles:
            title = normalize_title(raw)
            if not title or ILLEGAL_TITLE.search(title):
                reason = "The requested page title is empty or contains invalid characters."
                pages.append({"title": raw, "invalidreason": reason, "invalid": True})
                continue
            if title != raw and not any(n["from"] == raw for n in normalized):
                normalized.append({"fromencoded": False, "from": raw, "to": title})
            page = self.pages.get(title)
            if "redirects" in params and page is not None and page.redirect:  # one hop, like MediaWiki
                if not any(r["from"] == title for r in redirects):
                    redirects.append({"from": title, "to": page.redirect})
                title = page.redirect
            if title not in seen:
                seen.add(title)
                pages.append(self._describe(title, props, params, base, warnings))
        result: dict[str, Any] = {}
        if normalized:
            result["normalized"] = normalized
        if redirects:
            result["redirects"] = redirects
        result["pages"] = pages
        return result

    def _describe(
        self, title: str, props: list[str], params: dict[str, str], base: str, warnings: dict[str, list[str]]
    ) -> dict[str, Any]:
        namespace, _ = _split_namespace(title)
        page = self.pages.get(title)
        file = self.files.get(title)
        entry: dict[str, Any] = {"ns": namespace, "title": title}
        if page is not None:
            entry = {"pageid": page.pageid, **entry}
            if "revisions" in props:
                entry["revisions"] = [self._revision(page, params, warnings)]
            if "categories" in props:
                wanted = {normalize_title(c) for c in _multi(params.get("clcategories", ""))}
                listed = [f"Category:{c}" for c in page.categories]
                listed = [c for c in listed if not wanted or c in wanted]
                if listed:  # formatversion=2 leaves the key out when there are none
                    entry["categories"] = [{"ns": 14, "title": c} for c in sorted(listed)]
        elif file is None or namespace != 6:
            entry["missing"] = True
        if "imageinfo" in props and namespace == 6:
            entry["imagerepository"] = "local" if file else ""
            if file:
                entry["imageinfo"] = [self._imageinfo(file, params, base)]
        return entry

    def _revision(self, page: Page, params: dict[str, str], warnings: dict[str, list[str]]) -> dict[str, Any]:
        rvprop = _multi(params.get("rvprop", "ids|timestamp"))
        revision: dict[str, Any] = {}
        if "ids" in rvprop:
            revision.update(revid=page.revid, parentid=0)
        if "timestamp" in rvprop:
            revision["timestamp"] = page.timestamp
        if "content" in rvprop:
            content = {"contentmodel": "wikitext", "contentformat": "text/x-wiki", "content": page.content}
            if "rvslots" in params:
                revision["slots"] = {"main": content}
            else:
                revision.update(content)
                warnings.setdefault("revisions", []).append(LEGACY_SLOTS_WARNING)
        return revision

    def _imageinfo(self, file: File, params: dict[str, str], base: str) -> dict[str, Any]:
        iiprop = _multi(params.get("iiprop", "timestamp|user"))
        name = file.title.removeprefix("File:").replace(" ", "_")
        info: dict[str, Any] = {}
        if "timestamp" in iiprop:
            info["timestamp"] = TIMESTAMP
        if "user" in iiprop:
            info["user"] = "Sample uploader"
        if "size" in iiprop:
            info.update(size=len(file.data), width=file.width, height=file.height)
        if "url" in iiprop:
            info["url"] = f"{base}/fandom/images/{quote(name)}"
            info["descriptionurl"] = f"{base}/fandom/wiki/File:{quote(name)}"
        if "mime" in iiprop:
            info["mime"] = file.mime
        if "sha1" in iiprop:
            info["sha1"] = file.sha1
        return info


def _page(title: str, pageid: int, revid: int, content: str, timestamp: str = TIMESTAMP) -> Page:
    redirect = REDIRECT.match(content)
    return Page(title=title, pageid=pageid, revid=revid, content=content,
                categories=[normalize_title(c) for c in CATEGORY_LINK.findall(content)],
                redirect=normalize_title(redirect.group(1)) if redirect else None, timestamp=timestamp)


def _rc_row(change: Change, rcprop: set[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"type": change.type, "ns": 0}
    if "title" in rcprop:
        row["title"] = change.title
    if "ids" in rcprop:
        row.update(pageid=change.pageid, revid=change.revid, old_revid=change.old_revid, rcid=change.rcid)
    if "timestamp" in rcprop:
        row["timestamp"] = change.timestamp
    if "loginfo" in rcprop and change.logtype:
        row.update(logtype=change.logtype, logaction=change.logtype, logparams=[])
    return row


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ts_mw(iso: str) -> str:
    """ISO 8601 as MediaWiki's 14-digit TS_MW, the form its continue values use."""
    return re.sub(r"\D", "", iso)


def _mw_time(value: str) -> str:
    """A MediaWiki timestamp (ISO 8601 or the 14-digit TS_MW form) as ISO 8601 UTC, to compare."""
    digits = re.sub(r"\D", "", value)
    if len(digits) != 14:
        raise ApiError("badtimestamp", f'Invalid value "{value}" for timestamp parameter.')
    return f"{digits[:4]}-{digits[4:6]}-{digits[6:8]}T{digits[8:10]}:{digits[10:12]}:{digits[12:14]}Z"


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


def normalize_title(title: str) -> str:
    """MediaWiki's spelling of a title: spaces not underscores, canonical namespace, first letter up."""
    title = " ".join(title.replace("_", " ").split())
    prefix, sep, rest = title.partition(":")
    if sep and prefix.strip().lower() in NAMESPACES:
        rest = rest.strip()
        return f"{NAMESPACES[prefix.strip().lower()][0]}:{rest[:1].upper()}{rest[1:]}"
    return title[:1].upper() + title[1:]


def _split_namespace(title: str) -> tuple[int, str]:
    prefix, sep, rest = title.partition(":")
    if sep and prefix.lower() in NAMESPACES:
        return NAMESPACES[prefix.lower()][1], rest
    return 0, title


def _sortkey(title: str) -> str:
    """The category sort key as cmcontinue shows it: the upper-cased title's UTF-8, in hex."""
    return title.upper().encode("utf-8").hex().upper()


def _multi(value: str) -> list[str]:
    return [part for part in value.split("|") if part] if value else []


def _values(params: dict[str, str], name: str, allowed: set[str]) -> list[str]:
    """A multi-value module parameter; a module we do not emulate is the API's own "badvalue"."""
    values = _multi(params.get(name, ""))
    for value in values:
        if value not in allowed:
            raise ApiError("badvalue", f'Unrecognized value for parameter "{name}": {value}.')
    return values


def _v1(data: Any, v2: bool, key: str = "") -> Any:
    """formatversion=1's shapes from formatversion=2's: pages keyed by id, true as "", text as "*"."""
    if v2:
        return data
    if isinstance(data, dict):
        out = {}
        for k, value in data.items():
            if value is False:
                continue
            if k in ("content", "warnings") and isinstance(value, str):
                k = "*"
            out[k] = _v1(value, v2, k)
        return out
    if isinstance(data, list):
        if key == "pages":
            keyed, missing = {}, 0
            for page in data:
                if "pageid" not in page:
                    missing -= 1
                keyed[str(page.get("pageid", missing))] = _v1(page, v2)
            return keyed
        return [_v1(item, v2) for item in data]
    return "" if data is True else data


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return 0, 0


# --- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the offline sample sources on loopback.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--snapshot", type=Path, help="snapshot folder (default: the bundled one)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = SampleSourcesServer(args.snapshot, host=args.host, port=args.port)
    print(server.start(), flush=True)
    while not stop.wait(0.5):
        pass
    server.stop()


if __name__ == "__main__":
    main()
