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
from urllib.parse import urlsplit

from loretune.failpoints import failpoint
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


Map = Callable[[Callable[[Any], Any], list[Any]], list[Any]]


def in_order(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """`collect`'s default `fan_out`: one item after another, in this process."""
    return [fn(item) for item in items]


def hosts(scope: Mapping[str, Any]) -> set[str]:
    """The host names in a source's scope: the servers it talks to. Scheme and port are left out,
    so one server behind http and https, or on two ports, counts once (the cautious reading)."""
    urls = [u for value in scope.values() for u in (value if isinstance(value, (list, tuple)) else [value])
            if isinstance(u, str)]
    return {host for host in (urlsplit(u).hostname for u in urls) if host}


def reported_hosts(reports: Mapping[str, Any]) -> list[str]:
    """The hosts of every source's scope as a documents manifest records them (`SourceReport.scope`)."""
    return sorted(set().union(*(hosts(r.get("scope") or {}) for r in reports.values() if isinstance(r, dict))))


def host_groups(scopes: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """The sources in groups that share no server, in `scopes`' order (each group too).

    Politeness is per host (the minimum interval, robots.txt's Crawl-delay, Retry-After) and lives
    in one `PoliteSession`, so two sources that talk to one server must not run side by side: they
    are one group, run one after the other, and only groups run in parallel. The sample sources
    server is one host for all four, so offline they are one group.
    """
    groups: list[tuple[set[str], list[str]]] = []
    for name, scope in scopes.items():
        named = hosts(scope)
        overlapping = [g for g in groups if g[0] & named]
        merged = (set(named).union(*(g[0] for g in overlapping)), [n for g in overlapping for n in g[1]] + [name])
        groups = [g for g in groups if g not in overlapping] + [merged]
    order = list(scopes)
    return sorted((sorted(names, key=order.index) for _, names in groups), key=lambda g: order.index(g[0]))


def collect(sources: Mapping[str, Any], http: Mapping[str, Any], log: Log = print,
            previous: Callable[[], Stored] = Stored, runners: Mapping[str, Runner] = RUNNERS, cache_dir: Path | None = None,
            scopes: Mapping[str, Scope] = SCOPES, fan_out: Map = in_order,
            ) -> tuple[list[Document], dict[str, SourceReport]]:
    """Every enabled source's documents; a failed source's come from the stored version instead,
    if that version's documents of the source came from the same scope (see the module docstring).

    `sources`: each source's settings by name (`settings`); `http`: the `PoliteSession` settings.

    `previous` is called once; its documents are read at most once, and only if a source needs
    them (to update them incrementally, or to carry them forward after a failure).
    `cache_dir` keeps an HTTP cache between runs (conditional requests); None means no cache.
    `scopes` gives each runner's scope; a runner without one has the empty scope.
    `fan_out(fn, groups)` runs `fn` on each group of sources that share no server (`host_groups`)
    and returns the results in order: one after another by default; the task layer passes one that
    runs them across a Dask cluster. Documents come in the runners' order either way, so the
    corpus, and its version, do not depend on how the sources ran.
    """
    stored = previous()
    read_stored = cache(lambda: list(stored.read()))
    scoped = {name: scopes[name](sources[name]) if name in scopes and sources.get(name) is not None else {}
              for name in runners}

    def run_one(name: str, session: PoliteSession) -> tuple[list[Document], SourceReport]:
        section, scope, run = sources.get(name), scoped[name], runners[name]
        if section is not None and not section.enabled:
            return [], SourceReport("skipped", error="disabled in config", scope=scope)
        start = (session.requests_made, session.bytes_received, session.cached_responses)

        def used() -> tuple[int, int, int]:  # this source's share of the group's session
            return tuple(now - then for now, then in zip(
                (session.requests_made, session.bytes_received, session.cached_responses), start))

        refusal = stored.refusal(name, scope)
        if refusal is None:
            state = dict(stored.states.get(name) or {})
            prior = Prior(state, lambda: [doc for doc in read_stored() if doc.source == name])
        else:  # not its own past: start from nothing, as on the first run
            state, prior = {}, Prior({}, list)
        try:
            docs, stats, new_state = run(section, session, prior, log)
        except SourceSkipped as exc:
            log(f"{name}: skipped: {exc}")
            return [], SourceReport("skipped", error=str(exc), scope=scope)
        except Exception as exc:  # any failure of one source is reported, not raised
            kept = prior.documents()
            if refusal is None:
                log(f"{name}: FAILED: {exc} (keeping its {len(kept)} documents from documents {stored.version})")
            else:
                log(f"{name}: FAILED: {exc} (nothing carried forward: {refusal})")
            requests, received, cached = used()
            return kept, SourceReport("failed", len(kept), requests, received,
                                      error=f"{type(exc).__name__}: {exc}", carried_forward=len(kept),
                                      carried_from=stored.version if refusal is None else None,
                                      not_carried=refusal, cached=cached, state=state, scope=scope)
        requests, received, cached = used()
        failpoint("ingest:between-sources")
        return docs, SourceReport("ok", len(docs), max(requests, stats.get("requests", 0)),  # praw counts its own
                                  received, cached=cached, stats=stats, state=new_state, scope=scope)

    # Every host the config names may be on a private address (the sample server is on loopback);
    # a host that only fetched content names must be public (see ingest/http.py).
    configured = sorted(set().union(*(hosts(scope) for scope in scoped.values())))

    def run_group(names: list[str]) -> list[tuple[str, tuple[list[Document], SourceReport]]]:
        """Sources that share a server, one after another, through one session: its per-host
        interval, robots.txt and Retry-After then hold across them. Each source's report counts
        only its own requests."""
        session = PoliteSession(**http, cache_dir=cache_dir, configured_hosts=configured)
        return [(name, run_one(name, session)) for name in names]

    done = dict(pair for group in fan_out(run_group, host_groups(scoped)) for pair in group)
    documents = [doc for name in runners for doc in done[name][0]]  # the runners' order, however they ran
    reports = {name: done[name][1] for name in runners}
    attempted = [r for r in reports.values() if r.status != "skipped"]
    if attempted and all(r.status == "failed" for r in attempted):
        raise AllSourcesFailed("every source failed: " + "; ".join(
            f"{name}: {r.error}" for name, r in reports.items() if r.status == "failed"))
    return documents, reports
