"""Run every configured source; one failing source never sinks the others.

Each source reports status (ok / failed / skipped), documents, requests, bytes and, if it failed,
why. The caller decides what a partial result means (the documents stage publishes what it got
and flags the failures; it fails only when every enabled source failed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from loretune.config import HttpConfig, SourcesConfig
from loretune.ingest import fandom
from loretune.ingest.documents import Document
from loretune.ingest.http import PoliteSession, SourceSkipped


@dataclass
class SourceReport:
    status: str  # ok | failed | skipped
    documents: int = 0
    requests: int = 0
    bytes: int = 0
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class AllSourcesFailed(RuntimeError):
    """No enabled source produced documents; nothing is published and nothing stored is touched."""


def collect(sources: SourcesConfig, http: HttpConfig, log: Callable[[str], None] = print
            ) -> tuple[list[Document], dict[str, SourceReport]]:
    runners: dict[str, tuple[bool, Callable[[PoliteSession], tuple[list[Document], dict]]]] = {
        "fandom": (sources.fandom.enabled, lambda session: fandom.crawl(
            sources.fandom.api_url, sources.fandom.categories, session,
            batch_size=sources.fandom.batch_size, max_pages=sources.fandom.max_pages,
            license=sources.fandom.license, log=log)),
    }
    documents: list[Document] = []
    reports: dict[str, SourceReport] = {}
    for name, (enabled, run) in runners.items():
        if not enabled:
            reports[name] = SourceReport("skipped", error="disabled in config")
            continue
        session = PoliteSession(**http.model_dump())
        try:
            docs, stats = run(session)
        except SourceSkipped as exc:
            reports[name] = SourceReport("skipped", error=str(exc))
            log(f"{name}: skipped: {exc}")
            continue
        except Exception as exc:  # any failure of one source is reported, not raised
            reports[name] = SourceReport("failed", requests=session.requests_made,
                                         bytes=session.bytes_received, error=f"{type(exc).__name__}: {exc}")
            log(f"{name}: FAILED: {exc}")
            continue
        documents += docs
        reports[name] = SourceReport("ok", len(docs), session.requests_made, session.bytes_received, stats=stats)
    attempted = [r for r in reports.values() if r.status != "skipped"]
    if attempted and all(r.status == "failed" for r in attempted):
        raise AllSourcesFailed("every source failed: " + "; ".join(
            f"{name}: {r.error}" for name, r in reports.items() if r.status == "failed"))
    return documents, reports
