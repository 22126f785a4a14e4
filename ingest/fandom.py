"""Fandom (any MediaWiki wiki) ingest through the action API, politely.

Politeness here means few, batched requests: category listings follow the API's own continuation,
page content comes 50 titles per request (the API's limit), and image URLs are resolved in batches
too. Every request carries maxlag=5, so a lagging wiki can tell us to go away before it suffers.
Redirects are followed once by the API (redirects=1), and a page reached twice is stored once.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlsplit

from loretune.ingest.documents import Document
from loretune.ingest.http import PoliteSession, SourceError
from loretune.ingest.wikitext import normalize_title, parse_page

API_TITLES_LIMIT = 50  # titles per request for clients without the apihighlimits right
MAXLAG_S = "5"  # seconds of replication lag after which the wiki may refuse us
MAXLAG_RETRIES = 5  # a lagging wiki says when to come back; after this many waits we give up


def crawl(
    api_url: str,
    categories: list[str],
    session: PoliteSession,
    *,
    batch_size: int = 50,
    max_pages: int | None = None,
    license: str = "CC BY-SA 3.0",
    log: Callable[[str], None] = print,
) -> tuple[list[Document], dict]:
    """Every page in `categories` as a Document, plus statistics about how they were fetched.

    `stats["requests"]` counts API calls made here; retries are in `session.requests_made`.
    """
    if not 1 <= batch_size <= API_TITLES_LIMIT:
        raise ValueError(f"batch_size {batch_size}: the API takes 1 to {API_TITLES_LIMIT} titles a request")
    api = _Api(api_url, session, log)
    site = api.site_info()

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
        "requests": api.requests,
        "pages": len(documents),
        "revisions_requests": len(api.titles_per_revisions_request),
        "titles_per_revisions_request": api.titles_per_revisions_request,
        "images": len(file_urls),
        "skipped": skipped,
        "warnings": api.warnings,
    }
    return documents, stats


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
        return {"sitename": general["sitename"], "server": server, "articlepath": general["articlepath"]}

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
