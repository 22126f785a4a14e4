"""The sample Sportskeeda site: an anime RSS feed, sitemaps, article pages and their images.

Sportskeeda has no API; loretune reads what any browser gets. So this serves static files recorded
in that shape (`snapshot/sportskeeda/`), with one change at serve time: the pages hold absolute URLs,
as the real ones do, written with a `{base}` placeholder that becomes this server's address, so the
scraper follows links exactly as it would on the real site. A missing article is a real 404 page.

Sitemaps are served as real sites publish them: a `<sitemapindex>` naming child sitemaps, one of
them a gzip file. `/sportskeeda/sitemap/<name>.xml` is the snapshot's `sitemap-<name>.xml` and
`<name>.xml.gz` the same file gzipped at serve time, so the repository holds no binary and a test's
snapshot copy can add sitemaps (nested indexes, say) without touching this module.

The pictures are drawn here (a flat colour derived from the file name) rather than stored: they only
need to be valid, distinct images, and code is easier to review than binary files.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import struct
import zlib
from pathlib import Path
from typing import Any

from loretune.samples.server import Reply, _html_reply

PREFIX = "/sportskeeda"
FEED_PATH = f"{PREFIX}/anime/feed"
SITEMAP_DIR = f"{PREFIX}/sitemap/"
SITEMAP_PATH = f"{SITEMAP_DIR}anime.xml"
SITEMAP_INDEX_PATH = f"{SITEMAP_DIR}index.xml"  # lists anime.xml and anime-archive.xml.gz
SITEMAP_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")  # no dots or slashes: nothing outside the snapshot
IMAGE_SIZE = 32


def overrides(base: str) -> dict[str, Any]:
    """Config overrides (dotted keys, as for `--set`) that point loretune's Sportskeeda source here."""
    return {
        "sources.sportskeeda.base_url": f"{base}{PREFIX}",
        "sources.sportskeeda.feed_url": f"{base}{FEED_PATH}",
        "sources.sportskeeda.sitemap_urls": [f"{base}{SITEMAP_INDEX_PATH}"],
    }


class Site:
    def __init__(self, snapshot_dir: Path):
        self.root = Path(snapshot_dir) / "sportskeeda"

    def handle(self, path: str, params: dict[str, str], headers: dict[str, str], base_url: str) -> Reply:
        """One GET. Query strings (the feed's utm_ tags) are ignored, as the real site ignores them."""
        if path == FEED_PATH:
            return self._file("feed.xml", "application/rss+xml; charset=utf-8", base_url)
        if path.startswith(SITEMAP_DIR):
            return self._sitemap(path.removeprefix(SITEMAP_DIR), base_url)
        if path.startswith(f"{PREFIX}/images/") and path.endswith(".png"):
            return Reply(200, _png(path.rsplit("/", 1)[1]), "image/png", {"Cache-Control": "max-age=86400"})
        if path.startswith(f"{PREFIX}/anime/"):
            slug = path.removeprefix(f"{PREFIX}/anime/").strip("/")
            if slug and "/" not in slug and "." not in slug:
                return self._file(f"anime/{slug}.html", "text/html; charset=utf-8", base_url)
        return _not_found(path)

    def _sitemap(self, name: str, base_url: str) -> Reply:
        """`<name>.xml`, or `<name>.xml.gz` gzipped here (mtime 0: the same bytes on every request)."""
        compressed = name.endswith(".xml.gz")
        stem = name.removesuffix(".gz").removesuffix(".xml")
        if not name.endswith((".xml", ".xml.gz")) or not SITEMAP_NAME.fullmatch(stem):
            return _not_found(f"{SITEMAP_DIR}{name}")
        reply = self._file(f"sitemap-{stem}.xml", "application/xml; charset=utf-8", base_url)
        if compressed and reply.status == 200:
            return Reply(200, gzip.compress(reply.body, mtime=0), "application/x-gzip", {})
        return reply

    def _file(self, name: str, content_type: str, base_url: str) -> Reply:
        path = self.root / name
        if not path.is_file():
            return _not_found(name)
        body = path.read_bytes().replace(b"{base}", base_url.encode("ascii"))
        return Reply(200, body, content_type, {})


def _not_found(path: str) -> Reply:
    return _html_reply(404, "Page Not Found | Sportskeeda", f"We could not find {path}.")


def _png(name: str) -> bytes:
    """A small opaque PNG whose colour comes from `name`, so every picture is distinct and stable."""
    red, green, blue = hashlib.sha256(name.encode("utf-8")).digest()[:3]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((red, green, blue)) * IMAGE_SIZE for _ in range(IMAGE_SIZE))
    header = struct.pack(">IIBBBBB", IMAGE_SIZE, IMAGE_SIZE, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
