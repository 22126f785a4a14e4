"""Sportskeeda anime articles: discovered from the RSS feed and sitemaps, read from their pages.

Sportskeeda has no API, so this reads what a browser gets, politely (one `PoliteSession`), and keeps
only articles about the configured fandom: the anime feed covers every series, and fetching pages we
would throw away costs the site and us. A feed item carries its title and summary, so it is judged
before any fetch; a sitemap entry often carries only a URL, so it is judged by the URL and, failing
that, by the headline of the page once fetched.

Metadata comes from the page's JSON-LD `NewsArticle` (the publisher's own structured statement of
headline, author, date and image), falling back to the `<h1>` and meta tags older templates use. The
body is the article's paragraphs after removing everything that is not the article: ads, "Also read"
lines and boxes, related-article lists, newsletter boxes, navigation, scripts and styles. Those are
found by what they are marked as (tags, ARIA roles, class names), not by guessing from their wording,
except the inline "Also read:" line, which has no markup of its own. The same body, split at its
h2/h3/h4 headings, goes into `meta["sections"]` for the dataset stage.

    docs, stats = crawl(config.sources.sportskeeda, session)
"""

from __future__ import annotations

import gzip
import html
import io
import json
import re
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable, Iterable, Iterator, NamedTuple
from urllib.parse import urljoin, urlsplit, urlunsplit
from xml.etree import ElementTree

import feedparser
from bs4 import BeautifulSoup, Tag

from loretune.ingest.documents import Document
from loretune.ingest.http import PoliteSession, SourceError

ARTICLE_TYPES = {"NewsArticle", "Article", "ReportageNewsArticle", "AnalysisNewsArticle", "BlogPosting"}
BLOCKS = ["p", "h2", "h3", "h4", "li", "blockquote"]  # what prose is made of; divs only hold it
HEADINGS = {"h2", "h3", "h4"}  # the blocks that start a section (the <h1> is the headline, not body)
NOISE_TAGS = ["script", "style", "noscript", "template", "iframe", "svg", "form", "button", "input",
              "aside", "nav", "header", "footer", "figcaption"]
NOISE_ROLES = {"navigation", "complementary", "banner", "contentinfo", "search", "form"}
# Matched against each class name and the id, split at - and _ (so "ad-container" is an ad, "read" is
# not "ad"): the names sites give to ads, promotions, cross-links, sign-ups and share bars.
NOISE_NAME = re.compile(
    r"(?:^|[-_])(?:ads?|advert\w*|sponsor\w*|promo\w*|newsletter|subscribe\w*|signup|related|also|"
    r"recommended|trending|share|sharing|social|comments?|breadcrumbs?|author|byline)(?:[-_]|$)",
    re.IGNORECASE,
)
ALSO_READ = re.compile(r"^\s*(?:also read|read also|read more|also check out|also see|see also)\b", re.IGNORECASE)
CHUNK = 64 * 1024  # how much of a non-feed to look at to say what it is
BODY_CONTAINERS = ['[itemprop="articleBody"]', "#article-content", ".article-content", ".article-body", "article"]
# Sitemap indexes: sites split big sitemaps by section or month and some index those indexes, but no
# honest site goes deeper; past this a loop or a trap is likelier than content.
MAX_SITEMAP_INDEX_DEPTH = 2
MAX_CHILD_SITEMAPS = 50  # child sitemaps fetched per configured sitemap, however deep the tree
GZIP_MAGIC = b"\x1f\x8b"
GUNZIP_CHUNK_BYTES = 64 * 1024


@dataclass
class Candidate:
    """An article URL and what the listing that named it said about it (None: it said nothing)."""

    url: str
    title: str | None = None
    summary: str = ""


@dataclass
class Article:
    title: str
    author: str
    published: str
    image: str | None
    text: str
    sections: list[dict[str, str]] = field(default_factory=list)  # see `article_sections`
    marked_up: bool = True  # JSON-LD says it is an article, or the page has an article body element


@dataclass(frozen=True)
class SportskeedaSettings:
    """What a Sportskeeda crawl reads (config: `sources.sportskeeda`)."""

    enabled: bool
    base_url: str
    feed_url: str
    sitemap_urls: tuple[str, ...]
    keywords: tuple[str, ...]
    max_articles: int
    license: str


def crawl(cfg: SportskeedaSettings, session: PoliteSession, log: Callable[[str], None] = print
          ) -> tuple[list[Document], dict[str, Any]]:
    """Documents for the articles about `cfg.keywords`, at most `cfg.max_articles`, and crawl stats.

    One failing article is logged and skipped; the source fails (`SourceError`) only when the feed
    and every sitemap failed, because then we do not know what exists at all.
    """
    candidates = discover(cfg, session, log)
    documents: list[Document] = []
    stats: dict[str, Any] = {"discovered": len(candidates), "kept": 0, "filtered_out": 0, "capped": 0, "failed": []}
    for candidate in candidates:
        if len(documents) >= cfg.max_articles:
            stats["capped"] += 1
            continue
        listed_match = matches(cfg.keywords, candidate.title or "", candidate.summary, candidate.url)
        if not listed_match and candidate.title is not None:  # the listing told us enough to say no
            stats["filtered_out"] += 1
            continue
        try:
            article = fetch_article(candidate.url, session)
        except SourceError as exc:
            log(f"sportskeeda: skipping {exc.url}: {exc.reason}")
            stats["failed"].append(candidate.url)
            continue
        if not listed_match and not matches(cfg.keywords, article.title):
            stats["filtered_out"] += 1
            continue
        documents.append(_document(candidate.url, article, cfg.license))
    stats["kept"] = len(documents)
    stats["requests"] = session.requests_made
    log(f"sportskeeda: {stats['kept']} articles kept of {stats['discovered']} discovered "
        f"({stats['filtered_out']} off-topic, {len(stats['failed'])} failed, {stats['capped']} over the cap)")
    return documents, stats


def discover(cfg: SportskeedaSettings, session: PoliteSession, log: Callable[[str], None] = print) -> list[Candidate]:
    """Candidates from the feed, then each sitemap, one per canonical URL (the first listing wins:
    the feed's, which has a title and summary to judge by)."""
    read_sitemap = partial(sitemap_candidates, log=log)
    listings = [(cfg.feed_url, feed_candidates)] + [(url, read_sitemap) for url in cfg.sitemap_urls]
    found: dict[str, Candidate] = {}
    errors: list[str] = []
    for url, read in listings:
        try:
            for candidate in read(url, session):
                found.setdefault(candidate.url, candidate)
        except SourceError as exc:
            log(f"sportskeeda: listing failed: {exc}")
            errors.append(str(exc))
    if errors and len(errors) == len(listings):
        raise SourceError(cfg.feed_url, "the feed and every sitemap failed: " + "; ".join(errors))
    return list(found.values())


def feed_candidates(url: str, session: PoliteSession) -> list[Candidate]:
    """The items of an RSS/Atom feed. feedparser gets bytes we fetched, so the polite session (robots,
    rate limit, retries, size cap) is the only thing that ever talks to the site."""
    body = session.get_bytes(url)
    parsed = feedparser.parse(body)
    if not parsed.entries:
        page = BeautifulSoup(body[:CHUNK], "html.parser")
        if page.find("html"):
            title = page.title
            reason = "expected a feed, got an HTML page" + (f" ({_clean(title.get_text())})" if title else "")
        else:
            reason = f"not a feed ({parsed.bozo_exception})" if parsed.bozo else "the feed has no items"
        raise SourceError(url, reason)
    return [
        Candidate(canonical_url(urljoin(url, entry.link)), entry.get("title", ""), _plain(entry.get("summary", "")))
        for entry in parsed.entries
        if entry.get("link")
    ]


def sitemap_candidates(url: str, session: PoliteSession, log: Callable[[str], None] = print) -> list[Candidate]:
    """The `<url>` entries of a sitemap, with the Google News `<news:title>` when there is one; a
    `<sitemapindex>` is followed to its child sitemaps, which may be gzip files (`.xml.gz`).

    Children go through the same session (robots, rate limit, size cap), at most MAX_CHILD_SITEMAPS
    of them and MAX_SITEMAP_INDEX_DEPTH levels of index. A failing child is logged and skipped: one
    bad month of an archive should not hide the others. Namespaces are matched by local name:
    sitemaps in the wild disagree on them. (ElementTree never fetches external entities, and the
    expat it uses refuses entity-expansion bombs.)
    """
    walk = _SitemapWalk(session, log, budget=MAX_CHILD_SITEMAPS, seen={url})
    candidates = _sitemap_tree(url, walk, depth=0)
    if walk.skipped:
        log(f"sportskeeda: {url}: fetched {MAX_CHILD_SITEMAPS} child sitemaps, "
            f"skipped {walk.skipped} more over the cap")
    return candidates


@dataclass
class _SitemapWalk:
    """What one configured sitemap's tree shares: the child budget, so a huge index costs at most
    MAX_CHILD_SITEMAPS requests in all, and the URLs seen, so an index listing itself or a child
    twice costs nothing more."""

    session: PoliteSession
    log: Callable[[str], None]
    budget: int
    seen: set[str] = field(default_factory=set)
    skipped: int = 0


def _sitemap_tree(url: str, walk: _SitemapWalk, depth: int) -> list[Candidate]:
    """The candidates of the sitemap at `url`, which sits below `depth` indexes."""
    root = _sitemap_root(url, walk.session)
    kind = _local(root.tag)
    if kind == "urlset":
        return _url_entries(root, url)
    if kind != "sitemapindex":
        raise SourceError(url, f"not a sitemap <urlset> or <sitemapindex> but <{kind}>")
    if depth >= MAX_SITEMAP_INDEX_DEPTH:
        raise SourceError(url, f"sitemap index nested more than {MAX_SITEMAP_INDEX_DEPTH} levels deep; not followed")
    return _follow_index(url, root, walk, depth)


def _follow_index(url: str, root: ElementTree.Element, walk: _SitemapWalk, depth: int) -> list[Candidate]:
    """The candidates of every child the budget allows. The index fails only when every child it
    fetched failed: then it told us nothing, and `discover` must count it as a failed listing."""
    candidates: list[Candidate] = []
    errors: list[str] = []
    fetched = 0
    for child in _child_sitemaps(root, url, walk):
        if walk.budget <= 0:
            walk.skipped += 1
            continue
        walk.budget -= 1
        fetched += 1
        try:
            candidates += _sitemap_tree(child, walk, depth + 1)
        except SourceError as exc:
            walk.log(f"sportskeeda: child sitemap skipped: {exc}")
            errors.append(str(exc))
    if fetched and len(errors) == fetched:
        raise SourceError(url, "every child sitemap failed: " + "; ".join(errors))
    return candidates


def _child_sitemaps(root: ElementTree.Element, url: str, walk: _SitemapWalk) -> list[str]:
    """The index's `<sitemap><loc>` URLs not seen yet and on the index's own site: the sitemaps
    protocol only lets an index name sitemaps of its own site, and a crawler that followed any
    host an index names could be sent anywhere (a child on another host is logged, not fetched)."""
    children = []
    for entry in root:
        if _local(entry.tag) != "sitemap":
            continue
        loc = next((el.text or "" for el in entry if _local(el.tag) == "loc"), "").strip()
        child = urljoin(url, loc) if loc else ""
        if not child or child in walk.seen:
            continue
        walk.seen.add(child)
        if walk.session.may_follow(child, urlsplit(url).hostname or ""):
            children.append(child)
        else:
            walk.log(f"sportskeeda: child sitemap skipped: {child} is not on {urlsplit(url).hostname}")
    return children


def _sitemap_root(url: str, session: PoliteSession) -> ElementTree.Element:
    body = session.get_bytes(url)
    if body.startswith(GZIP_MAGIC):  # by content, not name or Content-Type: both lie in the wild
        body = _gunzip_bounded(body, session.max_response_bytes, url)
    try:
        return ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise SourceError(url, f"not a sitemap: invalid XML ({exc})") from None


def _url_entries(root: ElementTree.Element, url: str) -> list[Candidate]:
    candidates = []
    for entry in root:
        fields = {_local(el.tag): (el.text or "").strip() for el in entry.iter()}
        if fields.get("loc"):
            candidates.append(Candidate(canonical_url(urljoin(url, fields["loc"])), fields.get("title") or None))
    return candidates


def _gunzip_bounded(data: bytes, limit: int, url: str) -> bytes:
    """`data` decompressed, refusing to produce more than `limit` bytes.

    The session caps what comes over the wire, but gzip shrinks repetitive text a thousandfold, so a
    small download can be a gzip bomb: decompression is read in chunks and stopped at the same cap.
    """
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            while chunk := stream.read(min(GUNZIP_CHUNK_BYTES, limit + 1 - len(out))):
                out += chunk
                if len(out) > limit:
                    raise SourceError(url, f"gzip sitemap decompresses to over the {limit}-byte limit")
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; EOFError: cut short
        raise SourceError(url, f"corrupt gzip file ({type(exc).__name__}: {exc})") from None
    return bytes(out)


def matches(keywords: Iterable[str], *texts: str) -> bool:
    """Whether any keyword occurs in any text, ignoring case; no keywords means no filter."""
    keywords = [k.lower() for k in keywords if k.strip()]
    haystack = " ".join(texts).lower()
    return not keywords or any(k in haystack for k in keywords)


def fetch_article(url: str, session: PoliteSession) -> Article:
    """An article page, refusing pages that are not one: a maintenance or error page served with
    200 has paragraphs too, and would otherwise be stored under the article's URL."""
    article = parse_article(session.get_bytes(url), url)
    if not article.marked_up:
        raise SourceError(url, f"not an article page (no article JSON-LD or body; titled {article.title!r})")
    if not article.text:
        raise SourceError(url, "no article text found on the page")
    return article


def parse_article(page: bytes | str, url: str) -> Article:
    """Metadata from JSON-LD (else `<h1>` and meta tags), text from the cleaned article body."""
    soup = BeautifulSoup(page, "html.parser")
    data = json_ld_article(soup) or {}
    image = _first_image(data.get("image")) or _meta(soup, "og:image", "twitter:image")
    blocks = article_blocks(soup)
    return Article(
        title=_clean(html.unescape(_json_text(data.get("headline")))) or _fallback_title(soup),
        author=_author_names(data.get("author")) or _fallback_author(soup),
        published=_json_text(data.get("datePublished")) or _fallback_published(soup),
        image=_absolute(url, image) if image else None,
        text=_paragraphs(block.text for block in blocks),
        sections=article_sections(blocks),
        marked_up=bool(data) or any(soup.select_one(selector) for selector in BODY_CONTAINERS),
    )


def json_ld_article(soup: BeautifulSoup) -> dict[str, Any] | None:
    """The first Article-typed JSON-LD object, wherever the page put it (top level, a list, @graph).

    A broken JSON-LD block is skipped, not fatal: pages often carry several and one is often wrong.
    Broken includes what `json` refuses other than by syntax: an integer of over 4300 digits
    (ValueError) and nesting deeper than the interpreter's recursion limit (RecursionError).
    """
    for script in soup.find_all("script", type="application/ld+json"):
        try:
            data = json.loads(script.string or "", strict=False)  # strict=False: raw newlines in strings
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            continue
        for node in _json_ld_nodes(data):
            types = node.get("@type")
            if any(isinstance(t, str) and t in ARTICLE_TYPES for t in (types if isinstance(types, list) else [types])):
                return node
    return None


class Block(NamedTuple):
    """One prose block of the article: its tag name (which says whether it starts a section) and text."""

    tag: str
    text: str


def article_blocks(soup: BeautifulSoup) -> list[Block]:
    """The article's prose blocks in page order, with the non-article parts removed.

    Removes by markup first (tags, roles, class/id names), then takes only prose blocks that are not
    nested in another one (so a list item holding a <p> counts once) and drops "Also read:" lines.
    The text and the sections are both built from this one list, so they can never disagree about
    what the article says. Removing the noise changes `soup`.

    Both steps are one walk down the tree that does not enter what it took (a noise element, an
    outer block), so a deeply nested page costs time in proportion to its size: checking each
    element for a noise or block ancestor instead was quadratic (20,000 nested <div>s: minutes).
    """
    body = _body_container(soup)
    for element in _outermost(body, _is_noise):
        element.decompose()
    blocks = []
    for block in _outermost(body, lambda element: element.name in BLOCKS):
        text = _clean(block.get_text())
        if text and not ALSO_READ.match(text):
            blocks.append(Block(block.name, text))
    return blocks


def _outermost(root: Tag, wanted: Callable[[Tag], bool]) -> list[Tag]:
    """The tags below `root` that are `wanted` and have no `wanted` ancestor below `root`, in page
    order (a walk with its own stack: no recursion limit on how deep a page nests)."""
    found: list[Tag] = []
    stack = [iter(root.contents)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
        elif isinstance(child, Tag):
            if wanted(child):
                found.append(child)
            else:
                stack.append(iter(child.contents))
    return found


def article_text(soup: BeautifulSoup) -> str:
    """The article's prose blocks in page order, one per paragraph, with the non-article parts removed."""
    return _paragraphs(block.text for block in article_blocks(soup))


def article_sections(blocks: Iterable[Block]) -> list[dict[str, str]]:
    """The blocks split at each h2/h3/h4, in page order: `{"heading": ..., "text": ...}`, where the
    text is the section's blocks one per paragraph without the heading, and the part before the first
    heading has the heading "".

    The dataset stage builds examples per section, and a heading says what its paragraphs are about.
    Heading levels are not nested: pages pick them for looks as often as for structure. A section
    with no text (a heading straight after another, or one that ends the page) is left out, as it has
    nothing to learn from; so headings and texts joined in order give back `article_text` exactly
    when no heading was left out.
    """
    grouped: list[tuple[str, list[str]]] = [("", [])]
    for block in blocks:
        if block.tag in HEADINGS:
            grouped.append((block.text, []))
        else:
            grouped[-1][1].append(block.text)
    return [{"heading": heading, "text": _paragraphs(texts)} for heading, texts in grouped if texts]


def canonical_url(url: str) -> str:
    """The URL without query or fragment: the feed tags its links (utm_source=...) and the sitemap does
    not, and Sportskeeda's article addresses never need a query, so this makes one article one key."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def slug(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


# --- helpers ---------------------------------------------------------------------------------


def _document(url: str, article: Article, license: str) -> Document:
    return Document(
        source="sportskeeda",
        id=slug(url),
        url=url,
        title=article.title,
        text=article.text,
        image_urls=[article.image] if article.image else [],
        license=license,
        attribution=f"Sportskeeda, {url}",
        fetched_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        meta={"author": article.author, "published": article.published, "sections": article.sections},
    )


def _json_ld_nodes(data: Any) -> Iterator[dict[str, Any]]:
    """Every object of a JSON-LD value in document order: lists and `@graph`s opened, however
    deep (with a stack of our own: JSON nests as deep as the recursion limit allows)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            yield item
            stack.append(item.get("@graph", []))


def _json_text(value: Any) -> str:
    """A JSON-LD text property (headline, date) as text; a number as written; anything else, none."""
    if isinstance(value, bool) or value is None:
        return ""
    return value if isinstance(value, str) else str(value) if isinstance(value, (int, float)) else ""


def _first_image(value: Any) -> str | None:
    """schema.org allows an image as a URL, an ImageObject, or a list of either; only a non-empty
    string is a URL (a nested list, a number, an object as `url` are not)."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            item = next((v for v in (item.get("url"), item.get("contentUrl")) if isinstance(v, str) and v), None)
        if isinstance(item, str) and item:
            return item
    return None


def _absolute(base: str, link: str) -> str | None:
    """`link` resolved against the page's URL; None for one no URL parser accepts ("http://[")."""
    try:
        return urljoin(base, link)
    except ValueError:
        return None


def _author_names(value: Any) -> str:
    """schema.org allows an author as a name, a Person/Organization, or a list of them."""
    if isinstance(value, list):
        return ", ".join(name for name in map(_author_name, value) if name)
    return _author_name(value)


def _author_name(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("name")
    return _clean(value) if isinstance(value, str) else ""


def _fallback_title(soup: BeautifulSoup) -> str:
    h1 = soup.find("h1")
    return (_clean(h1.get_text()) if h1 else "") or _meta(soup, "og:title") or (
        _clean(soup.title.get_text()) if soup.title else "")


def _fallback_author(soup: BeautifulSoup) -> str:
    named = _meta(soup, "author")
    if named:
        return named
    link = soup.find("a", rel="author")
    return _clean(link.get_text()) if link else ""


def _fallback_published(soup: BeautifulSoup) -> str:
    time = soup.find("time", datetime=True)
    return _meta(soup, "article:published_time") or (str(time["datetime"]) if time else "")


def _meta(soup: BeautifulSoup, *names: str) -> str:
    """The first non-empty <meta> content among `names` (OpenGraph uses property=, others name=)."""
    for name in names:
        tag = soup.find("meta", attrs={"property": name}) or soup.find("meta", attrs={"name": name})
        if tag and tag.get("content", "").strip():
            return _clean(tag["content"])
    return ""


def _body_container(soup: BeautifulSoup) -> Tag:
    for selector in BODY_CONTAINERS:
        found = soup.select_one(selector)
        if found is not None:
            return found
    return soup.body or soup


def _is_noise(element: Tag) -> bool:
    if element.name in NOISE_TAGS or element.get("role") in NOISE_ROLES:
        return True
    names = list(element.get("class") or []) + [element.get("id") or ""]
    return any(NOISE_NAME.search(name) for name in names if name)


def _plain(fragment: str) -> str:
    return _clean(BeautifulSoup(fragment, "html.parser").get_text(" ")) if fragment else ""


def _paragraphs(texts: Iterable[str]) -> str:
    """Texts one per paragraph, the way every document's text separates its blocks."""
    return "\n\n".join(texts)


def _clean(text: str) -> str:
    return " ".join(text.split())


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]
