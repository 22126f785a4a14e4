"""Run every configured source; one failing source never sinks the others.

Each source reports status (ok / failed / skipped), documents, requests, bytes and, if it failed,
why. A failed source keeps the documents it had in the previous version (`carried_forward`), so a
bad night never shrinks the corpus; only when every enabled source failed is nothing published.

A source may also hand back `state` for its next run (Fandom: where in recentchanges to resume).
It is published with the documents it describes, and comes back through `Stored` next time, so
state and documents can never disagree: a run that publishes nothing leaves both as they were.

What a source builds on must be its own past: `Stored` is the newest version of the same domain
(the store may hold several), and each source's report records its *scope*, the configured URLs its
documents came from (`SCOPES`). A source is offered the stored state and documents only when the
stored scope equals the configured one, so a failing source never inherits another wiki's pages or
the sample server's; otherwise it starts from nothing, and, if it fails, carries nothing forward and
says why (`not_carried`). Only the site is compared, not categories, subreddits or videos: within
one site the last good documents are still the best stand-in for a failed night.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from loretune.ingest import fandom, reddit, sportskeeda, youtube
from loretune.ingest.documents import Document
from loretune.ingest.http import PoliteSession, SourceSkipped
from loretune.settings import from_values


@dataclass
class SourceReport:
    status: str  # ok | failed | skipped
    documents: int = 0
    requests: int = 0
    bytes: int = 0
    error: str | None = None
    carried_forward: int = 0
    carried_from: str | None = None  # the documents version they were carried from
    not_carried: str | None = None  # why a failed source carried nothing forward
    cached: int = 0  # responses that came from the HTTP cache (mostly 304 Not Modified)
    stats: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    scope: dict[str, Any] = field(default_factory=dict)  # where this source's documents come from


@dataclass
class Stored:
    """The newest stored documents version of this domain: each source's state and scope, and a
    reader for its documents (called only when a source needs them: an incremental update or a
    failure). `version` None means there is none, and `absent` says why."""

    states: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    read: Callable[[], Sequence[Document]] = tuple
    scopes: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    version: str | None = None
    absent: str = "no stored documents version"

    def refusal(self, name: str, scope: Mapping[str, Any]) -> str | None:
        """Why source `name`, configured with `scope`, may not build on this version; None if it may."""
        if self.version is None:
            return self.absent
        recorded = self.scopes.get(name)
        if recorded is None:
            return f"documents {self.version} does not record where its {name} documents came from"
        if dict(recorded) != dict(scope):
            changed = sorted(k for k in {*recorded, *scope} if recorded.get(k) != scope.get(k))
            return (f"documents {self.version} has {name} documents from another source scope ("
                    + "; ".join(f"{k}: {recorded.get(k)!r} then, {scope.get(k)!r} now" for k in changed) + ")")
        return None


@dataclass
class Prior:
    """One source's view of `Stored`."""

    state: dict[str, Any]
    documents: Callable[[], list[Document]]


class AllSourcesFailed(RuntimeError):
    """No enabled source produced documents; nothing is published and nothing stored is touched."""


Log = Callable[[str], None]
Harvest = tuple[list[Document], dict, dict]  # documents, stats, state for the next run
# A runner gets its own source's settings, a polite session, what is stored of it, and a log.
Runner = Callable[[Any, PoliteSession, Prior, Log], Harvest]

# Each source's settings, built from its config section by `settings` (the task layer's translation).
SETTINGS: dict[str, type] = {"fandom": fandom.FandomSettings, "reddit": reddit.RedditSettings,
                             "youtube": youtube.YouTubeSettings, "sportskeeda": sportskeeda.SportskeedaSettings}
# What a source's config section holds for the task alone (the secret's block name).
TASK_ONLY = {"reddit": ("credentials_block",)}


def settings(sections: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Each source's settings from its config section's values (`SourcesConfig.model_dump()`)."""
    return {name: from_values(SETTINGS[name], values, ignore=TASK_ONLY.get(name, ()))
            for name, values in sections.items()}


def _fandom(cfg: fandom.FandomSettings, session: PoliteSession, prior: Prior, log: Log) -> Harvest:
    return fandom.crawl(cfg.api_url, list(cfg.categories), session, batch_size=cfg.batch_size,
                        max_pages=cfg.max_pages, license=cfg.license, log=log,
                        state=prior.state if cfg.incremental else None, stored=prior.documents,
                        max_state_age=timedelta(days=cfg.max_state_age_days))


def _youtube(cfg: youtube.YouTubeSettings, session: PoliteSession, prior: Prior, log: Log) -> Harvest:
    if not cfg.videos:
        raise SourceSkipped("no videos configured (sources.youtube.videos is empty)")
    return *youtube.crawl(cfg, session, log=log), {}


def _reddit(cfg: reddit.RedditSettings, session: PoliteSession, prior: Prior, log: Log,
            env: Callable[[], Mapping[str, str]] = lambda: os.environ) -> Harvest:
    """praw has its own HTTP client (and rate limiter); it sends the session's user agent. `env` is
    called here, inside the source, so a credential store that cannot be read fails Reddit alone."""
    return *reddit.crawl(cfg, user_agent=session.user_agent, log=log, env=env()), {}


def _sportskeeda(cfg: sportskeeda.SportskeedaSettings, session: PoliteSession, prior: Prior, log: Log) -> Harvest:
    return *sportskeeda.crawl(cfg, session, log=log), {}


RUNNERS: dict[str, Runner] = {"fandom": _fandom, "reddit": _reddit, "youtube": _youtube, "sportskeeda": _sportskeeda}

# Each source's scope, from its own settings: the configured URLs its documents come from (JSON
# values: it is stored in the manifest and compared with the config on the next run).
Scope = Callable[[Any], dict[str, Any]]
SCOPES: dict[str, Scope] = {
    "fandom": lambda s: {"api_url": s.api_url},
    "reddit": lambda s: {"oauth_url": s.oauth_url, "reddit_url": s.reddit_url},
    "youtube": lambda s: {"info_url": s.info_url},
    "sportskeeda": lambda s: {"base_url": s.base_url, "feed_url": s.feed_url, "sitemap_urls": list(s.sitemap_urls)},
}


def collect(sources: Mapping[str, Any], http: Mapping[str, Any], log: Log = print,
            previous: Callable[[], Stored] = Stored, runners: Mapping[str, Runner] = RUNNERS, cache_dir: Path | None = None,
            scopes: Mapping[str, Scope] = SCOPES,
            ) -> tuple[list[Document], dict[str, SourceReport]]:
    """Every enabled source's documents; a failed source's come from the stored version instead,
    if that version's documents of the source came from the same scope (see the module docstring).

    `sources`: each source's settings by name (`settings`); `http`: the `PoliteSession` settings.

    `previous` is called once; its documents are read at most once, and only if a source needs
    them (to update them incrementally, or to carry them forward after a failure).
    `cache_dir` keeps an HTTP cache between runs (conditional requests); None means no cache.
    `scopes` gives each runner's scope; a runner without one has the empty scope.
    """
    documents: list[Document] = []
    reports: dict[str, SourceReport] = {}
    stored = previous()
    read_stored = cache(lambda: list(stored.read()))
    for name, run in runners.items():
        section = sources.get(name)
        scope = scopes[name](section) if name in scopes and section is not None else {}
        if section is not None and not section.enabled:
            reports[name] = SourceReport("skipped", error="disabled in config", scope=scope)
            continue
        session = PoliteSession(**http, cache_dir=cache_dir)
        refusal = stored.refusal(name, scope)
        if refusal is None:
            state = dict(stored.states.get(name) or {})
            prior = Prior(state, lambda name=name: [doc for doc in read_stored() if doc.source == name])
        else:  # not its own past: start from nothing, as on the first run
            state, prior = {}, Prior({}, list)
        try:
            docs, stats, new_state = run(section, session, prior, log)
        except SourceSkipped as exc:
            reports[name] = SourceReport("skipped", error=str(exc), scope=scope)
            log(f"{name}: skipped: {exc}")
            continue
        except Exception as exc:  # any failure of one source is reported, not raised
            kept = prior.documents()
            documents += kept
            reports[name] = SourceReport("failed", len(kept), session.requests_made, session.bytes_received,
                                         error=f"{type(exc).__name__}: {exc}", carried_forward=len(kept),
                                         carried_from=stored.version if refusal is None else None,
                                         not_carried=refusal, cached=session.cached_responses, state=state,
                                         scope=scope)
            if refusal is None:
                log(f"{name}: FAILED: {exc} (keeping its {len(kept)} documents from documents {stored.version})")
            else:
                log(f"{name}: FAILED: {exc} (nothing carried forward: {refusal})")
            continue
        documents += docs
        requests = max(session.requests_made, stats.get("requests", 0))  # praw counts its own
        reports[name] = SourceReport("ok", len(docs), requests, session.bytes_received,
                                     cached=session.cached_responses, stats=stats, state=new_state, scope=scope)
    attempted = [r for r in reports.values() if r.status != "skipped"]
    if attempted and all(r.status == "failed" for r in attempted):
        raise AllSourcesFailed("every source failed: " + "; ".join(
            f"{name}: {r.error}" for name, r in reports.items() if r.status == "failed"))
    return documents, reports
