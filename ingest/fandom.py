"""Fandom (any MediaWiki wiki) ingest through the action API, politely.

Politeness here means few, batched requests: category listings follow the API's own continuation,
page content comes 50 titles per request (the API's limit), and image URLs are resolved in batches
too. Every request carries maxlag=5, so a lagging wiki can tell us to go away before it suffers.
Redirects are followed once by the API (redirects=1), and a page reached twice is stored once.

After a first crawl, later runs are incremental: the wiki's `list=recentchanges` since the stored
crawl says which titles were edited, created, moved or deleted; only those are looked at (their
categories first, without content, since most wiki edits are outside the configured categories),
and only those still in scope are re-fetched. Every other page is the stored document, unchanged.
A full crawl happens when there is no stored state, when the state is older than the wiki keeps
changes for, or when the crawl's scope (URL, categories, page cap, license, code) changed, since the
stored documents would then not be what a full crawl gives.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import quote, urlsplit

from loretune.fingerprint import code_version, digest
from loretune.ingest import documents as documents_module
from loretune.ingest import wikitext
from loretune.ingest.documents import Document
from loretune.ingest.http import PoliteSession, SourceError
from loretune.ingest.wikitext import normalize_title, parse_page

API_TITLES_LIMIT = 50  # titles per request for clients without the apihighlimits right
MAXLAG_S = "5"  # seconds of replication lag after which the wiki may refuse us
MAXLAG_RETRIES = 5  # a lagging wiki says when to come back; after this many waits we give up
RC_OVERLAP = timedelta(minutes=5)  # asked again next time: edits saved while we crawled are not missed


@dataclass(frozen=True)
class Scope:
    """What a crawl covers. Stored documents are only reused by a crawl of the same scope."""

    api_url: str
    categories: tuple[str, ...]
    max_pages: int | None = None
    license: str = ""

    def key(self) -> str:
        # The code that turns pages into documents is part of it: a better parser must re-read
        # every page, not just the ones edited since.
        code = code_version(sys.modules[__name__], wikitext, documents_module)
        return digest({"api_url": self.api_url, "categories": sorted(_category_name(c) for c in self.categories),
                       "max_pages": self.max_pages, "license": self.license, "code": code})


@dataclass(frozen=True)
class FandomSettings:
    """What a Fandom crawl reads (config: `sources.fandom`)."""

    enabled: bool
    api_url: str
    categories: tuple[str, ...]
    batch_size: int
    max_pages: int | None
    license: str
    incremental: bool  # after a stored crawl, fetch only the pages in list=recentchanges
    max_state_age_days: float


def crawl(
    api_url: str,
    categories: list[str],
    session: PoliteSession,
    *,
    batch_size: int = 50,
    max_pages: int | None = None,
    license: str = "CC BY-SA 3.0",
    log: Callable[[str], None] = print,
    state: dict[str, Any] | None = None,
    stored: Callable[[], Sequence[Document]] = tuple,
    max_state_age: timedelta = timedelta(days=30),
) -> tuple[list[Document], dict, dict[str, Any]]:
    """Every page in `categories` as a Document, statistics about how they were fetched, and the
    state the next run needs to be incremental.

    `state` and `stored` are what the previous run returned and published; `stored` is only called
    for an incremental run. `stats["requests"]` counts API calls made here; retries are in
    `session.requests_made`.
    """
    if not 1 <= batch_size <= API_TITLES_LIMIT:
        raise ValueError(f"batch_size {batch_size}: the API takes 1 to {API_TITLES_LIMIT} titles a request")
    api = _Api(api_url, session, log)
    site = api.site_info()
    scope = Scope(api_url, tuple(categories), max_pages, license).key()  # hashes code: once a crawl
    new_state = {"scope": scope, "since": _iso(_parse_time(site["time"]) - RC_OVERLAP)}
    reason = _why_full_crawl(state, scope, site["time"], max_state_age)
    if reason is None:
        docs, stats = _update(api, site, categories, max_pages, state["since"], list(stored()), batch_size,
                              license, log)
    else:
        log(f"fandom: full crawl ({reason})")
        docs, stats = _crawl_all(api, site, categories, max_pages, batch_size, license, log)
    return docs, stats, new_state


def _crawl_all(api: _Api, site: dict[str, Any], categories: Sequence[str], max_pages: int | None,
               batch_size: int, license: str, log: Callable[[str], None]) -> tuple[list[Document], dict]:
    wanted: dict[str, None] = {}  # insertion-ordered set: a page in two categories is fetched once
    for category in categories:
        members = api.category_members(category, limit=_room(max_pages, wanted))
        log(f"fandom: Category:{_category_name(category)}: {len(members)} pages")
        wanted.update(dict.fromkeys(members))
        if max_pages is not None and len(wanted) >= max_pages:
            break
    titles = list(wanted)[:max_pages]

    pages, skipped = _fetch_pages(api, titles, batch_size, log)
    files = list(dict.fromkeys(name for page in pages for name in page["parsed"].files))
    file_urls = api.image_urls(files)
    log(f"fandom: resolved {len(file_urls)}/{len(files)} images in {api.image_requests} requests")

    documents = [_document(page, site, file_urls, license) for page in pages]
    stats = {
        "mode": "full",
        "requests": api.requests,
        "pages": len(documents),
        "revisions_requests": len(api.titles_per_revisions_request),
        "titles_per_revisions_request": api.titles_per_revisions_request,
        "images": len(file_urls),
        "skipped": skipped,
        "warnings": api.warnings,
    }
    return documents, stats


def _update(api: _Api, site: dict[str, Any], categories: Sequence[str], max_pages: int | None, since: str,
            stored: list[Document], batch_size: int, license: str, log: Callable[[str], None]
            ) -> tuple[list[Document], dict]:
    """The stored documents, with the pages changed since `since` re-fetched, added or removed."""
    stored = [doc for doc in stored if doc.source == "fandom"]
    touched = set(api.recent_changes(since))
    stats: dict[str, Any] = {"mode": "incremental", "since": since, "changed_titles": len(touched)}
    if not touched:
        log(f"fandom: no changes since {since}; keeping the {len(stored)} stored pages")
        return stored, {**stats, "requests": api.requests, "pages": len(stored), "refetched": []}

    in_scope = api.titles_in_categories(sorted(touched), categories)
    by_title = {doc.title: doc for doc in stored}
    pages, skipped = _fetch_pages(api, in_scope, batch_size, log) if in_scope else ([], {})
    files = list(dict.fromkeys(name for page in pages for name in page["parsed"].files))
    file_urls = api.image_urls(files)
    fresh = [_document(page, site, file_urls, license) for page in pages]

    # A touched title is replaced by what it is now: re-fetched, or gone (deleted, moved away, or
    # out of every category). A move keeps the page id, so the id drops the old title's document too.
    replaced_ids = {doc.id for doc in fresh}
    gone = [t for t in sorted(touched) if t in by_title and by_title[t].id not in replaced_ids]
    kept = [doc for doc in stored if doc.title not in touched and doc.id not in replaced_ids]
    documents = kept + fresh
    if max_pages is not None and len(documents) > max_pages:
        documents = kept[:max_pages] + fresh[: max(0, max_pages - len(kept))]
    log(f"fandom: {len(touched)} titles changed since {since}; re-fetched {len(fresh)}, "
        f"removed {len(gone)}, kept {len(kept)} stored pages")
    return documents, {**stats, "requests": api.requests, "pages": len(documents),
                       "refetched": [doc.title for doc in fresh], "removed": gone, "skipped": skipped,
                       "warnings": api.warnings}


def _why_full_crawl(state: dict[str, Any] | None, scope: str, now: str, max_age: timedelta) -> str | None:
    """Why this run cannot be incremental (`scope`: this crawl's `Scope.key()`), or None if it can."""
    if not state or "since" not in state:
        return "no stored crawl state"
    if state.get("scope") != scope:
        return "the wiki, categories, page cap, license or parser changed since the stored crawl"
    age = _parse_time(now) - _parse_time(state["since"])
    if age > max_age:
        return f"the stored crawl is {age.days} days old, more than {max_age.days}"
    return None


def _parse_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def article_url(site: dict[str, Any], title: str) -> str:
    """A page's URL as the wiki itself builds it (server + articlepath), underscores for spaces."""
    name = quote(title.replace(" ", "_"), safe=";@$!*(),/~:")
    return site["server"] + site["articlepath"].replace("$1", name)


def _fetch_pages(
    api: _Api, titles: list[str], batch_size: int, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Pages with content, each once; redirects, disambiguation and missing pages set aside."""
    pages: list[dict[str, Any]] = []
    seen: set[int] = set()
    skipped: dict[str, list[str]] = {"disambiguation": [], "redirects": [], "missing": []}
    for start in range(0, len(titles), batch_size):
        batch = titles[start : start + batch_size]
        fetched_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        found, redirects = api.revisions(batch)
        skipped["redirects"].extend(redirects)
        for page in found:
            if page.get("missing") or page.get("invalid") or "revisions" not in page:
                skipped["missing"].append(page.get("title", "?"))
                continue
            if page["pageid"] in seen:
                continue  # reached again, through a redirect or a second category
            seen.add(page["pageid"])
            revision = page["revisions"][0]
            parsed = parse_page(revision["slots"]["main"]["content"])
            if parsed.redirect:  # a redirect to a redirect: the API follows only one hop, so do we
                skipped["redirects"].append(page["title"])
            elif parsed.is_disambiguation:
                skipped["disambiguation"].append(page["title"])
            else:
                pages.append({**page, "revision": revision, "parsed": parsed, "fetched_at": fetched_at})
        done = min(start + batch_size, len(titles))
        requests = len(api.titles_per_revisions_request)
        log(f"fandom: fetched {done}/{len(titles)} pages in {requests} requests")
    skipped = {reason: list(dict.fromkeys(names)) for reason, names in skipped.items()}
    for reason, names in skipped.items():
        if names:
            log(f"fandom: skipped {len(names)} {reason}: {', '.join(names)}")
    return pages, skipped


def _document(
    page: dict[str, Any], site: dict[str, Any], file_urls: dict[str, str], license: str
) -> Document:
    parsed, revision = page["parsed"], page["revision"]
    url = article_url(site, page["title"])
    return Document(
        source="fandom",
        id=str(page["pageid"]),
        url=url,
        title=page["title"],
        text=parsed.prose,
        image_urls=[file_urls[name] for name in parsed.files if name in file_urls],  # infobox image first
        license=license,
        attribution=f"{site['sitename']} contributors, {url}, {license}",
        fetched_at=page["fetched_at"],
        meta={
            "pageid": page["pageid"],
            "revid": revision.get("revid"),
            "timestamp": revision.get("timestamp"),
            "infobox_type": parsed.infobox_type,
            "infobox": parsed.infobox,
            "categories": parsed.categories,
        },
    )


class _Api:
    """The MediaWiki action API calls the crawl needs, with its request bookkeeping."""

    def __init__(self, api_url: str, session: PoliteSession, log: Callable[[str], None]):
        self.url, self.session, self.log = api_url, session, log
        self.requests = 0
        self.image_requests = 0
        self.titles_per_revisions_request: list[int] = []
        self.warnings: list[str] = []

    def site_info(self) -> dict[str, Any]:
        """Site name (for attribution) and how article URLs are built."""
        general = self.get({"meta": "siteinfo", "siprop": "general"})["query"]["general"]
        server = general["server"]
        if server.startswith("//"):  # protocol-relative, as some wikis configure $wgServer
            server = f"{urlsplit(self.url).scheme}:{server}"
        # The wiki's clock, not ours, is what recentchanges timestamps are compared with.
        now = general.get("time") or _iso(datetime.now(timezone.utc))
        return {"sitename": general["sitename"], "server": server, "articlepath": general["articlepath"],
                "time": now}

    def recent_changes(self, since: str) -> list[str]:
        """Titles (main namespace) edited, created, moved or deleted since `since`, oldest first."""
        params = {
            "list": "recentchanges",
            "rcstart": since,
            "rcdir": "newer",
            "rcnamespace": "0",
            "rctype": "edit|new|log",
            "rcprop": "title|ids|timestamp|loginfo",
            "rclimit": "500",
        }
        titles: dict[str, None] = {}
        for response in self.get_all(params):
            for change in response.get("query", {}).get("recentchanges", []):
                if change["type"] == "log" and change.get("logtype") not in ("delete", "move", "restore"):
                    continue  # uploads, blocks, user rights: no page text changed
                titles[change["title"]] = None
                target = _move_target(change)
                if target:
                    titles[target] = None
        return list(titles)

    def titles_in_categories(self, titles: list[str], categories: Sequence[str]) -> list[str]:
        """Which of `titles` (after redirects) are pages in any of `categories`, asked without content."""
        wanted = "|".join(f"Category:{_category_name(c)}" for c in categories)
        found: dict[str, None] = {}
        for start in range(0, len(titles), API_TITLES_LIMIT):
            batch = titles[start : start + API_TITLES_LIMIT]
            params = {"prop": "categories", "titles": "|".join(batch), "clcategories": wanted,
                      "cllimit": "max", "redirects": "1"}
            for response in self.get_all(params):
                for page in response.get("query", {}).get("pages", []):
                    if page.get("categories") and not page.get("missing"):
                        found[page["title"]] = None
        return list(found)

    def category_members(self, category: str, limit: int | None) -> list[str]:
        """Titles of the category's pages (not subcategories or files), following continuation."""
        params = {
            "list": "categorymembers",
            "cmtitle": f"Category:{_category_name(category)}",
            "cmtype": "page",
            "cmlimit": "500",
        }
        titles: list[str] = []
        for response in self.get_all(params):
            titles.extend(member["title"] for member in response["query"]["categorymembers"])
            if limit is not None and len(titles) >= limit:
                break  # enough for max_pages: asking for more would only load the wiki
        return titles

    def revisions(self, titles: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
        """(pages with their latest revision, titles that were redirects) for one batch."""
        params = {
            "prop": "revisions",
            "titles": "|".join(titles),
            "rvprop": "content|ids|timestamp",
            "rvslots": "main",
            "redirects": "1",
        }
        pages: dict[str, dict[str, Any]] = {}
        redirects: list[str] = []
        for response in self.get_all(params):
            self.titles_per_revisions_request.append(len(titles))
            query = response.get("query", {})
            redirects.extend(r["from"] for r in query.get("redirects", []))
            for page in query.get("pages", []):
                # Content too large for one response continues with rvcontinue: merge by title.
                merged = pages.setdefault(page["title"], page)
                if "revisions" in page:
                    merged["revisions"] = page["revisions"]
        return list(pages.values()), redirects

    def image_urls(self, files: list[str]) -> dict[str, str]:
        """File name -> URL for the files the wiki has; missing files are left out."""
        before = self.requests
        urls: dict[str, str] = {}
        for start in range(0, len(files), API_TITLES_LIMIT):
            batch = files[start : start + API_TITLES_LIMIT]
            params = {
                "prop": "imageinfo",
                "titles": "|".join(f"File:{name}" for name in batch),
                "iiprop": "url|size|mime|sha1",
                "redirects": "1",  # renamed files leave redirects behind
            }
            for response in self.get_all(params):
                query = response.get("query", {})
                for page in query.get("pages", []):
                    info = page.get("imageinfo")
                    if info and "url" in info[0]:
                        for title in _asked_as(query, page["title"]):
                            urls[title.partition(":")[2]] = self._absolute(info[0]["url"])
        self.image_requests = self.requests - before
        return urls

    def get_all(self, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Each response of a query, passing the API's `continue` values back until it has no more."""
        cont: dict[str, str] = {}
        while True:
            response = self.get({**params, **cont})
            yield response
            if "continue" not in response:
                return
            cont = response["continue"]

    def get(self, params: dict[str, str]) -> dict[str, Any]:
        params = {"action": "query", "format": "json", "formatversion": "2", "maxlag": MAXLAG_S, **params}
        for attempt in range(MAXLAG_RETRIES + 1):
            self.requests += 1
            response, headers = self.session.get_json_with_headers(self.url, params)
            if response.get("error", {}).get("code") != "maxlag" or attempt == MAXLAG_RETRIES:
                break
            wait = float(headers.get("Retry-After") or 5)
            self.log(f"fandom: the wiki is lagging ({response['error'].get('info', '')}); retrying in {wait:g}s")
            time.sleep(wait)
        if "error" in response:
            error = response["error"]
            raise SourceError(self.url, f"API error {error.get('code', '?')}: {error.get('info', '')}")
        for module, warning in response.get("warnings", {}).items():
            text = f"{module}: {warning.get('warnings', warning)}"
            if text not in self.warnings:  # the same warning comes back with every batch
                self.warnings.append(text)
                self.log(f"fandom: API warning from {text}")
        return response

    def _absolute(self, url: str) -> str:
        return f"{urlsplit(self.url).scheme}:{url}" if url.startswith("//") else url


def _move_target(change: dict[str, Any]) -> str | None:
    """The new title of a page move (formatversion=2 and the older `logparams` shapes)."""
    params = change.get("logparams")
    if change.get("logtype") != "move" or not isinstance(params, dict):
        return None
    return params.get("target_title") or params.get("4::target")


def _asked_as(query: dict[str, Any], title: str) -> list[str]:
    """The titles we sent that the API answered as `title`, through normalisation and redirects."""
    asked = [title]
    for step in ("redirects", "normalized"):  # undo the API's steps in reverse order
        sources = {entry["to"]: [] for entry in query.get(step, [])}
        for entry in query.get(step, []):
            sources[entry["to"]].append(entry["from"])
        asked = [source for name in asked for source in [name, *sources.get(name, [])]]
    return asked


def _category_name(category: str) -> str:
    name = normalize_title(category)
    prefix, sep, rest = name.partition(":")
    return normalize_title(rest) if sep and prefix.lower() == "category" else name


def _room(max_pages: int | None, titles: dict[str, None]) -> int | None:
    return None if max_pages is None else max_pages - len(titles)
