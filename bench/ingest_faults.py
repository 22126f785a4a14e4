"""What each injected HTTP fault costs the ingest: retries, seconds, and whether the source survives.

Runs the sample snapshot through `loretune.ingest.sources.collect` (the same per-source runners the
`documents` stage uses) against a fresh in-process `SampleSourcesServer`: first a clean baseline,
then once per (fault, path, times) scenario with that fault injected (every fault on the Fandom API
at times=1 and at a count past every retry budget, the content faults on the other sources, and one
503+cut-off-body mix that exercises both retry loops). For the source the fault is
aimed at it records status, documents, on-the-wire requests (`PoliteSession.requests_made`, retries
included), the requests the server saw, wall time and the error, and prints a Markdown table:

    fault | path | times injected | outcome | faults hit | extra requests | extra seconds

"extra" is against the baseline (median of a few clean runs, after one warm-up run). Everything in
the table except the seconds is deterministic. Nothing is written anywhere but stdout (and the
`--json` file); no library code is changed or monkeypatched: timing and server-side request counts
come from wrapping the runners passed to `collect(..., runners=...)`.

    python bench/ingest_faults.py [--json out.json]
    python -m bench.ingest_faults --json out.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from loretune.config import load_config
from loretune.ingest import fandom as fandom_ingest
from loretune.ingest import sources as sources_mod
from loretune.samples.server import FAULTS, SampleSourcesServer, sample_overrides

REPO = Path(__file__).resolve().parent.parent
FANDOM_API = "/fandom/api.php"
RETRIED_FAULTS = {"429", "503", "timeout", "truncated", "maxlag"}  # transient by nature


@dataclass
class Scenario:
    fault: str
    path: str  # injected on requests whose path starts with this
    source: str  # the source whose requests hit that path
    times: int  # faults injected in all
    why: str = ""  # for the JSON: why this path
    pattern: list[tuple[str, int]] = field(default_factory=list)  # (fault, times) entries, served in order

    def __post_init__(self) -> None:
        if not self.pattern:
            self.pattern = [(self.fault, self.times)]


@dataclass
class SourceRun:
    status: str
    documents: int
    requests: int  # as collect reports it (client side, retries included)
    server_requests: int  # what the sample server logged while this source ran
    bytes: int
    seconds: float
    error: str | None
    digest: str  # of the source's documents (id, title, text, image URLs); fetched_at left out
    new_log: list[str] = field(default_factory=list)  # log lines not in the baseline's
    docs: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> title, text head, sha


@dataclass
class RunResult:
    seconds: float
    sources: dict[str, SourceRun]
    log: list[str]
    server_log: list[dict[str, Any]]
    all_failed: str | None = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "deployments" / "naruto.yaml"))
    parser.add_argument("--read-timeout", type=float, default=0.5, help="http.read_timeout_s (default 0.5)")
    parser.add_argument("--timeout-fault", type=float, default=1.0,
                        help="how long the server stays silent for a 'timeout' fault (default 1.0; "
                             "must exceed --read-timeout for the client to actually time out)")
    parser.add_argument("--backoff", type=float, default=0.1, help="http.backoff_s (default 0.1)")
    parser.add_argument("--max-retries", type=int, default=None, help="http.max_retries (default: the config's)")
    parser.add_argument("--baseline-runs", type=int, default=3, help="clean runs after one warm-up (median)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per scenario; seconds are the median, everything else must agree (default 1)")
    parser.add_argument("--only", action="append", default=[], metavar="FAULT",
                        help="run only these faults (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw numbers here")
    args = parser.parse_args(argv)
    if args.timeout_fault <= args.read_timeout:
        print("note: --timeout-fault <= --read-timeout: the 'timeout' fault is then a server hang-up, "
              "not a client read timeout", file=sys.stderr)
    for fault in args.only:
        if fault not in FAULTS:
            parser.error(f"--only {fault!r}: expected one of {', '.join(FAULTS)}")

    started = time.monotonic()
    with SampleSourcesServer() as server:
        server.timeout_fault_s = args.timeout_fault
        overrides = dict(sample_overrides(server.base_url))
        overrides.update({"http.read_timeout_s": args.read_timeout, "http.backoff_s": args.backoff})
        if args.max_retries is not None:
            overrides["http.max_retries"] = args.max_retries
        config = load_config(args.config, overrides)
        http = config.http
        # More than every retry budget: the session's (max_retries + 1 attempts) and Fandom's
        # maxlag waits (MAXLAG_RETRIES + 1 attempts), so each "times=N" row is a give-up.
        give_up_times = max(http.max_retries, fandom_ingest.MAXLAG_RETRIES) + 2
        scenarios = build_scenarios(give_up_times, args.only)

        run(server, config)  # warm-up: first imports, yt-dlp's first use, connection set-up
        baselines = [run(server, config) for _ in range(max(1, args.baseline_runs))]
        baseline = baselines[0]
        for other in baselines[1:]:
            for name, src in other.sources.items():
                ref = baseline.sources[name]
                if (src.status, src.documents, src.requests, src.digest) != (ref.status, ref.documents, ref.requests, ref.digest):
                    raise SystemExit(f"baseline is not deterministic for {name}: {ref} vs {src}")
        base_seconds = {name: statistics.median(b.sources[name].seconds for b in baselines) for name in baseline.sources}
        base_total = statistics.median(b.seconds for b in baselines)
        spread = {name: (min(b.sources[name].seconds for b in baselines), max(b.sources[name].seconds for b in baselines))
                  for name in baseline.sources}

        rows = []
        for scenario in scenarios:
            samples = []
            for _ in range(max(1, args.repeat)):
                server.clear_faults()
                for fault, times in scenario.pattern:  # the server serves the entries in order
                    server.inject(scenario.path, fault, times)
                result = run(server, config, baseline_log=baseline.log)
                server.clear_faults()
                samples.append(analyse(scenario, result, baseline, base_seconds, base_total, http, server.base_url))
            rows.append(merge(samples))
        settings = {
            "config": str(Path(args.config).resolve().relative_to(REPO)) if Path(args.config).resolve().is_relative_to(REPO) else args.config,
            "http.max_retries": http.max_retries,
            "http.backoff_s": http.backoff_s,
            "http.read_timeout_s": http.read_timeout_s,
            "http.connect_timeout_s": http.connect_timeout_s,
            "http.min_interval_s": http.min_interval_s,
            "http.respect_robots": http.respect_robots,
            "server.timeout_fault_s": server.timeout_fault_s,
            "fandom.MAXLAG_RETRIES": fandom_ingest.MAXLAG_RETRIES,
            "give_up_times": give_up_times,
            "baseline_runs": len(baselines),
            "repeat": max(1, args.repeat),
        }
    elapsed = time.monotonic() - started

    print(render(settings, baseline, base_seconds, base_total, spread, rows, elapsed))
    if args.json:
        payload = {
            "settings": settings,
            "environment": {"python": platform.python_version(), "platform": platform.platform(),
                            "git": git_state()},
            "runtime_s": round(elapsed, 3),
            "baseline": {
                "total_seconds_median": base_total,
                "sources": {name: {**asdict(src), "seconds_median": base_seconds[name],
                                   "seconds_min_max": spread[name]}
                            for name, src in baseline.sources.items()},
                "runs_seconds": [b.seconds for b in baselines],
                "log": baseline.log,
            },
            "scenarios": rows,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"\nraw numbers: {args.json}")
    return 0  # cross-check findings are results to report, not a failure of the benchmark


def merge(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from repeated runs of a scenario: median seconds; the rest must not vary."""
    row = dict(samples[0])
    if len(samples) == 1:
        return row
    for key in ("seconds", "extra_seconds", "total_seconds", "extra_total_seconds"):
        if row.get(key) is not None:
            row[key] = statistics.median(sample[key] for sample in samples)
            row[f"{key}_samples"] = [sample[key] for sample in samples]
    fixed = ("status", "documents", "requests", "server_requests", "faults_hit", "outcome")
    if any(tuple(s.get(k) for k in fixed) != tuple(row.get(k) for k in fixed) for s in samples[1:]):
        row["anomalies"] = row["anomalies"] + ["not deterministic across --repeat runs: " + "; ".join(
            str({k: s.get(k) for k in fixed}) for s in samples)]
    return row


def git_state() -> dict[str, Any]:
    """Which code was measured: HEAD, and the files changed on top of it (the tree may be dirty)."""
    import subprocess

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"head": git("rev-parse", "HEAD"), "changed": git("status", "--porcelain").splitlines()}


def build_scenarios(give_up_times: int, only: list[str]) -> list[Scenario]:
    """Every fault on the Fandom API (JSON, the one source where all eight make sense), at times=1
    and at a give-up count; then the content faults (not retried by design) where each source meets
    them, to show what a non-JSON source makes of them."""
    scenarios = []
    for fault in FAULTS:
        for times in (1, give_up_times):
            scenarios.append(Scenario(fault, FANDOM_API, "fandom", times,
                                      "first request of the crawl is siteinfo on this path"))
    extra = [
        ("html", "/sportskeeda/anime/feed", "sportskeeda",
         "a 200 maintenance page instead of the RSS feed; the sitemap is the fallback listing"),
        ("offsite", "/sportskeeda/anime/feed", "sportskeeda",
         "the feed redirects to another host; the sitemap is the fallback listing"),
        ("html", "/sportskeeda/anime/naruto-rasengan-vs-chidori", "sportskeeda",
         "a 200 maintenance page instead of one on-topic article"),
        ("truncated", "/sportskeeda/anime/naruto-rasengan-vs-chidori", "sportskeeda",
         "one article page cut off mid-body"),
        ("badjson", "/youtube/kR9mTlFx3aQ.info.json", "youtube",
         "one video's recorded info dict, half of it"),
        ("html", "/youtube/kR9mTlFx3aQ.info.json", "youtube",
         "one video's info dict answered with a 200 maintenance page"),
    ]
    for fault, path, source, why in extra:
        scenarios.append(Scenario(fault, path, source, 1, why))
    # Two retry loops meet here: urllib3's (status codes, timeouts; up to max_retries) inside
    # PoliteSession._get's own loop over cut-off bodies (also up to max_retries). Each urllib3 round
    # spends its budget on 503s and ends on a cut-off 200, which starts the next round.
    rounds = give_up_times  # more than enough: how many rounds happen is what is measured
    scenarios.append(Scenario("503+truncated", FANDOM_API, "fandom", 0,
                              "3x 503 then 1 cut-off body, repeated: both retry loops in one request",
                              pattern=[("503", 3), ("truncated", 1)] * rounds))
    scenarios[-1].times = sum(t for _, t in scenarios[-1].pattern)
    return [s for s in scenarios if not only or any(f in only for f, _ in s.pattern)]


def run(server: SampleSourcesServer, config: Any, baseline_log: list[str] | None = None) -> RunResult:
    """One `collect` of every source; per-source time and server-side request count via runner wrappers."""
    timings: dict[str, tuple[float, int]] = {}

    def timed(name: str, runner: Callable) -> Callable:
        def wrapped(*args, **kwargs):  # whatever the runner signature is: only timed, never changed
            seen_before, t0 = len(server.requests), time.monotonic()
            try:
                return runner(*args, **kwargs)
            finally:
                timings[name] = (time.monotonic() - t0, len(server.requests) - seen_before)
        return wrapped

    runners = {name: timed(name, runner) for name, runner in sources_mod.RUNNERS.items()}
    log: list[str] = []
    server.clear_log()
    t0 = time.monotonic()
    all_failed = None
    try:
        # No stored version and no HTTP cache (collect's defaults): every run is a full, cold crawl.
        documents, reports = sources_mod.collect(sources_mod.settings(config.sources.model_dump()), config.http.model_dump(), log=log.append, runners=runners)
    except sources_mod.AllSourcesFailed as exc:  # not expected: every fault targets one source
        documents, reports, all_failed = [], {}, str(exc)
    seconds = time.monotonic() - t0
    server_log = server.requests
    baseline_set = set(baseline_log or [])
    result = {}
    for name, report in reports.items():
        own = [doc for doc in documents if doc.source == name]
        digest = _sha(sorted([doc.id, doc.title, doc.text, doc.image_urls] for doc in own))
        docs = {doc.id: {"title": doc.title, "text_head": doc.text[:160], "sha": _sha([doc.title, doc.text, doc.image_urls])}
                for doc in own}
        secs, served = timings.get(name, (0.0, 0))
        result[name] = SourceRun(report.status, report.documents, report.requests, served, report.bytes, secs,
                                 report.error, digest,
                                 [line for line in log if line.startswith(f"{name}:") and line not in baseline_set]
                                 if baseline_log is not None else [], docs)
    return RunResult(seconds, result, log, server_log, all_failed)


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def document_changes(src: SourceRun, ref: SourceRun) -> dict[str, Any]:
    return {
        "missing": sorted(set(ref.docs) - set(src.docs)),
        "new": [{"id": i, **src.docs[i]} for i in sorted(set(src.docs) - set(ref.docs))],
        "changed": [{"id": i, "baseline_title": ref.docs[i]["title"], "title": src.docs[i]["title"],
                     "text_head": src.docs[i]["text_head"]}
                    for i in sorted(set(src.docs) & set(ref.docs)) if src.docs[i]["sha"] != ref.docs[i]["sha"]],
    }


def analyse(scenario: Scenario, result: RunResult, baseline: RunResult, base_seconds: dict[str, float],
            base_total: float, http: Any, base_url: str) -> dict[str, Any]:
    name = scenario.source
    src, ref = result.sources.get(name), baseline.sources[name]
    faulted = [r for r in result.server_log if r["fault"] is not None]
    retried = [any(later["path"] == r["path"] and later["params"] == r["params"]
                   for later in result.server_log[i + 1:])
               for i, r in enumerate(result.server_log) if r["fault"] is not None]
    row: dict[str, Any] = {
        **asdict(scenario),
        "faults_hit": len(faulted),
        "faulted_requests": [{"path": r["path"], "status": r["status"], "fault": r["fault"]} for r in faulted],
        "faulted_requests_reissued": retried,
        "total_seconds": result.seconds,
        "extra_total_seconds": result.seconds - base_total,
        "all_sources_failed": result.all_failed,
        "sources": {n: asdict(s) for n, s in result.sources.items()},
        "anomalies": [],
    }
    if src is None:
        row.update(outcome=f"collect raised: {short(result.all_failed or '?', base_url)}", extra_requests=None,
                   extra_seconds=None)
        row["anomalies"].append("collect raised AllSourcesFailed although only one source was faulted")
        return row
    row.update(
        status=src.status,
        documents=src.documents,
        baseline_documents=ref.documents,
        requests=src.requests,
        baseline_requests=ref.requests,
        extra_requests=src.requests - ref.requests,
        server_requests=src.server_requests,
        seconds=src.seconds,
        extra_seconds=src.seconds - base_seconds[name],
        error=src.error,
        new_log=src.new_log,
        document_changes=document_changes(src, ref),
    )
    row["outcome"] = outcome(src, ref, faulted, retried, base_url, row["document_changes"])

    # Cross-checks; anything odd is a finding for the report, not a crash.
    if src.requests != src.server_requests:
        row["anomalies"].append(f"client counted {src.requests} requests, the server saw {src.server_requests}")
    changes = row["document_changes"]
    if src.status == "ok" and (changes["changed"] or changes["new"]):
        first = (changes["changed"] or changes["new"])[0]
        row["anomalies"].append(f"{name} reported ok, but its documents' content differs from the baseline "
                                f"(e.g. {first['id']!r} titled {first['title']!r}): the faulted reply was "
                                f"ingested as content")
    for other, run_ in result.sources.items():
        ref_other = baseline.sources[other]
        if other != name and (run_.status, run_.documents, run_.requests, run_.digest) != (
                ref_other.status, ref_other.documents, ref_other.requests, ref_other.digest):
            row["anomalies"].append(f"{other} changed although the fault was aimed at {name}")
    if scenario.source == "fandom" and len(scenario.pattern) > 1:
        budget = http.max_retries + 1
        if len(faulted) > budget:
            row["anomalies"].append(f"{len(faulted)} attempts at one request, more than http.max_retries + 1 = "
                                    f"{budget} (the status/timeout retries and the cut-off-body retries each "
                                    f"have their own max_retries budget)")
    elif scenario.source == "fandom":
        budget = fandom_ingest.MAXLAG_RETRIES + 1 if scenario.fault == "maxlag" else http.max_retries + 1
        if scenario.fault in RETRIED_FAULTS:
            expect_hits = min(scenario.times, budget)
            expect_status = "ok" if scenario.times < budget else "failed"
        else:
            expect_hits, expect_status = 1, "failed"  # documented: an HTML page / invalid JSON / offsite redirect is a SourceError
        if len(faulted) != expect_hits or src.status != expect_status:
            row["anomalies"].append(f"expected {expect_status} after {expect_hits} faulted attempt(s) "
                                    f"(budget {budget}), got {src.status} after {len(faulted)}")
        if src.status == "ok" and src.requests - ref.requests != len(faulted):
            row["anomalies"].append(f"{len(faulted)} faulted attempt(s) but {src.requests - ref.requests} extra requests")
    return row


def outcome(src: SourceRun, ref: SourceRun, faulted: list[dict], retried: list[bool], base_url: str,
            changes: dict[str, Any]) -> str:
    note = short(src.new_log[0], base_url) if src.new_log else ""
    if src.status == "failed":
        reason = short(error_reason(src.error or ""), base_url)
        if faulted and any(retried):
            return f"failed after {len(faulted)} attempts: {reason}"
        if len(faulted) > 1:
            return f"failed after {len(faulted)} attempts: {reason}"
        return f"failed, not retried: {reason}"
    if src.status != "ok":
        return f"{src.status}: {short(src.error or '', base_url)}"
    if src.digest == ref.digest:
        if faulted and all(retried):
            return "retried + ok"
        return f"ok (fallback: {note})" if note else "ok"
    if src.documents < ref.documents:
        return f"ok, degraded: {src.documents}/{ref.documents} docs" + (f" ({note})" if note else "")
    what = [f"{len(changes['changed'])} changed" if changes["changed"] else "",
            f"{len(changes['new'])} new" if changes["new"] else "",
            f"{len(changes['missing'])} missing" if changes["missing"] else ""]
    detail = ", ".join(w for w in what if w)
    for change in changes["changed"][:1]:
        detail += f"; {change['id']!r} now titled {change['title']!r}: {change['text_head'][:60]!r}"
    return short(f"ok, but documents differ from baseline: {detail}" + (f" ({note})" if note else ""), base_url, 160)


def error_reason(error: str) -> str:
    """'SourceError: http://host/path?q: reason' -> 'reason' (the path is in the table already)."""
    match = re.match(r"^(\w+): (https?://\S+): (.*)$", error, re.DOTALL)
    return match.group(3) if match else error


def short(text: str, base_url: str, limit: int = 110) -> str:
    text = text.replace(base_url, "")
    # requests' "HTTPConnectionPool(...): Max retries exceeded with url: ... (Caused by X(...: why))"
    text = re.sub(r"HTTPConnectionPool\([^)]*\): Max retries exceeded with url: \S+ \(Caused by (\w+)\("
                  r"[\"']?(?:HTTPConnectionPool\([^)]*\): )?(.*?)[\"']?\)\)$", r"max retries exceeded (\1: \2)", text)
    text = re.sub(r"(127\.0\.0\.\d+):\d+", r"\1:PORT", text)
    text = re.sub(r"port=\d+", "port=PORT", text)
    text = re.sub(r"(\.php|\.json|/feed)\?[^\s)'\"]*", r"\1?…", text)  # long API queries
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(settings: dict, baseline: RunResult, base_seconds: dict, base_total: float, spread: dict,
           rows: list[dict], elapsed: float) -> str:
    out = ["# Ingest fault costs (sample sources server, `collect`)", ""]
    out.append("Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()))
    out.append("")
    out.append("A 429 says `Retry-After: 1`, so does a maxlag error; 503 says nothing (backoff). 'timeout': the "
               "server stays silent for `server.timeout_fault_s`, longer than `http.read_timeout_s`.")
    out.append("")
    out.append("Baseline (clean, median of {n} runs after a warm-up; total {t:.2f}s):".format(
        n=settings["baseline_runs"], t=base_total))
    out.append("")
    out.append("| source | status | documents | requests | bytes | seconds (min–max) |")
    out.append("|---|---|---|---|---|---|")
    for name, src in baseline.sources.items():
        lo, hi = spread[name]
        secs = f"{base_seconds[name]:.3f} ({lo:.3f}–{hi:.3f})" if src.status != "skipped" else "–"
        out.append(f"| {name} | {src.status} | {src.documents} | {src.requests} | {src.bytes} | {secs} |")
    out.append("")
    out.append("Faults (extra = vs the baseline of the faulted source; a negative count on a failed row "
               "means the crawl stopped early):")
    out.append("")
    out.append("| fault | path | times injected | outcome | faults hit | extra requests | extra seconds |")
    out.append("|---|---|---|---|---|---|---|")
    for name, src in baseline.sources.items():
        if src.status == "ok":
            out.append(f"| (baseline) | {name} | 0 | ok: {src.documents} docs | 0 | 0 ({src.requests}) | "
                       f"0 ({base_seconds[name]:.2f}s) |")
    for row in rows:
        extra_req = "–" if row.get("extra_requests") is None else f"{row['extra_requests']:+d}"
        extra_s = "–" if row.get("extra_seconds") is None else f"{row['extra_seconds']:+.2f}"
        flag = " ⚠" if row["anomalies"] else ""
        label = row["fault"] if len(row["pattern"]) == 1 else " → ".join(
            f"{f}×{t}" for f, t in row["pattern"][:2]) + f" (×{len(row['pattern']) // 2} rounds)"
        out.append(f"| {label} | `{row['path']}` | {row['times']} | {row['outcome']}{flag} | "
                   f"{row['faults_hit']} | {extra_req} | {extra_s} |")
    flagged = [row for row in rows if row["anomalies"]]
    if flagged:
        out.append("")
        out.append("⚠ cross-check findings:")
        for row in flagged:
            for anomaly in row["anomalies"]:
                out.append(f"- {row['fault']} ×{row['times']} on `{row['path']}`: {anomaly}")
    out.append("")
    out.append(f"Runtime: {elapsed:.1f}s")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
