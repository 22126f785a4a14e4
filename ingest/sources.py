"""Run every configured source; one failing source never sinks the others.

Each source reports status (ok / failed / skipped), documents, requests, bytes and, if it failed,
why. A failed source keeps the documents it had in the previous version (`carried_forward`), so a
bad night never shrinks the corpus; only when every enabled source failed is nothing published.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from loretune.config import HttpConfig, SourcesConfig
from loretune.ingest import fandom, reddit, sportskeeda, youtube
from loretune.ingest.documents import Document
from loretune.ingest.http import PoliteSession, SourceSkipped


@dataclass
class SourceReport:
    status: str  # ok | failed | skipped
    documents: int = 0
    requests: int = 0
    bytes: int = 0
    error: str | None = None
    carried_forward: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


class AllSourcesFailed(RuntimeError):
    """No enabled source produced documents; nothing is published and nothing stored is touched."""


Runner = Callable[[SourcesConfig, PoliteSession, HttpConfig, Callable[[str], None]], tuple[list[Document], dict]]


def _fandom(sources: SourcesConfig, session: PoliteSession, http: HttpConfig, log: Callable[[str], None]
            ) -> tuple[list[Document], dict]:
    cfg = sources.fandom
    return fandom.crawl(cfg.api_url, cfg.categories, session, batch_size=cfg.batch_size,
                        max_pages=cfg.max_pages, license=cfg.license, log=log)


def _youtube(sources: SourcesConfig, session: PoliteSession, http: HttpConfig, log: Callable[[str], None]
             ) -> tuple[list[Document], dict]:
    if not sources.youtube.videos:
        raise SourceSkipped("no videos configured (sources.youtube.videos is empty)")
    return youtube.crawl(sources.youtube, session, log=log)


def _reddit(sources: SourcesConfig, session: PoliteSession, http: HttpConfig, log: Callable[[str], None]
            ) -> tuple[list[Document], dict]:
    # praw has its own HTTP client (and rate limiter); credentials come from the environment.
    return reddit.crawl(sources.reddit, user_agent=http.user_agent, log=log)


def _sportskeeda(sources: SourcesConfig, session: PoliteSession, http: HttpConfig, log: Callable[[str], None]
                 ) -> tuple[list[Document], dict]:
    return sportskeeda.crawl(sources.sportskeeda, session, log=log)


RUNNERS: dict[str, Runner] = {"fandom": _fandom, "reddit": _reddit, "youtube": _youtube, "sportskeeda": _sportskeeda}


def collect(sources: SourcesConfig, http: HttpConfig, log: Callable[[str], None] = print,
            previous: Callable[[], Sequence[Document]] = tuple, runners: Mapping[str, Runner] = RUNNERS,
            ) -> tuple[list[Document], dict[str, SourceReport]]:
    """Every enabled source's documents; a failed source's come from `previous()` instead.

    `previous` is called only if a source fails (at most once), so a good night never reads the
    stored corpus.
    """
    documents: list[Document] = []
    reports: dict[str, SourceReport] = {}
    stored: Sequence[Document] | None = None
    for name, run in runners.items():
        section = getattr(sources, name, None)
        if section is not None and not section.enabled:
            reports[name] = SourceReport("skipped", error="disabled in config")
            continue
        session = PoliteSession(**http.model_dump())
        try:
            docs, stats = run(sources, session, http, log)
        except SourceSkipped as exc:
            reports[name] = SourceReport("skipped", error=str(exc))
            log(f"{name}: skipped: {exc}")
            continue
        except Exception as exc:  # any failure of one source is reported, not raised
            stored = previous() if stored is None else stored
            kept = [doc for doc in stored if doc.source == name]
            documents += kept
            reports[name] = SourceReport("failed", len(kept), session.requests_made, session.bytes_received,
                                         error=f"{type(exc).__name__}: {exc}", carried_forward=len(kept))
            log(f"{name}: FAILED: {exc} (keeping its {len(kept)} documents from the previous version)")
            continue
        documents += docs
        requests = max(session.requests_made, stats.get("requests", 0))  # praw counts its own
        reports[name] = SourceReport("ok", len(docs), requests, session.bytes_received, stats=stats)
    attempted = [r for r in reports.values() if r.status != "skipped"]
    if attempted and all(r.status == "failed" for r in attempted):
        raise AllSourcesFailed("every source failed: " + "; ".join(
            f"{name}: {r.error}" for name, r in reports.items() if r.status == "failed"))
    return documents, reports
