"""What a nightly ingest costs the sources: a cold crawl, a night with nothing changed, and a night
after two wiki pages were edited, all through the real `ingest` flow against the sample server.

    python bench/ingest_incremental.py [--json PATH]

Prints, per run: requests per source (robots.txt included), bytes received, 304s, Fandom
revisions requests and the titles they asked for, wall time, and whether a new documents version
was published. Reddit runs too when REDDIT_CLIENT_ID / REDDIT_CLIENT_SECRET are set (the sample
server accepts any).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

HOME = Path(tempfile.mkdtemp(prefix="loretune-bench-"))
os.environ["LORETUNE_HOME"] = str(HOME)  # a fresh HTTP cache and store, before loretune is imported
os.environ.setdefault("PREFECT_HOME", str(HOME / "prefect"))

from loretune.flows.refresh import ingest  # noqa: E402
from loretune.samples.server import SampleSourcesServer  # noqa: E402
from loretune.store import ArtifactStore  # noqa: E402

SOURCES = {"/fandom": "fandom", "/reddit": "reddit", "/youtube": "youtube", "/sportskeeda": "sportskeeda"}
EDITED = ["Gaara", "Chidori"]


def source_of(path: str) -> str:
    return next((name for prefix, name in SOURCES.items() if path.startswith(prefix)), "robots.txt")


def one_run(server: SampleSourcesServer, store: Path, label: str, versions_before: int) -> dict:
    server.clear_log()
    started = time.perf_counter()
    result = ingest(overrides={"store": str(store)}, sample_sources=server.base_url)
    seconds = time.perf_counter() - started
    served = server.requests
    version = result["stages"]["documents"]["version"]
    manifest = ArtifactStore(store).manifest("documents", version)  # this run's, or the unchanged one
    revisions = [r["params"]["titles"] for r in served if r["params"].get("prop") == "revisions"]
    return {
        "run": label,
        "seconds": round(seconds, 2),
        "requests": dict(Counter(source_of(r["path"]) for r in served)),
        "not_modified": sum(r["status"] == 304 for r in served),
        "bytes": sum(r["bytes"] for r in served),
        "fandom_api": [r["params"].get("list") or r["params"].get("prop") or r["params"].get("meta")
                       for r in served if r["path"] == "/fandom/api.php"],
        "revisions_titles": revisions,
        "new_version": len(ArtifactStore(store).versions("documents")) > versions_before,
        "documents": manifest["counts"]["documents"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    store = HOME / "store"
    rows = []
    with SampleSourcesServer() as server:
        for label in ("cold", "nothing changed", f"edited {' and '.join(EDITED)}"):
            if label.startswith("edited"):
                for title in EDITED:
                    server.wiki.edit(title, server.wiki.pages[title].content + f"\n{title} was edited tonight.\n")
            rows.append(one_run(server, store, label, len(ArtifactStore(store).versions("documents"))))

    print("| run | requests (robots.txt; fandom; reddit; youtube; sportskeeda) | 304s | bytes served | "
          "fandom API calls | titles fetched | new version | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        requests = row["requests"]
        per = "; ".join(str(requests.get(name, 0)) for name in ["robots.txt", *SOURCES.values()])
        fetched = [t for titles in row["revisions_titles"] for t in titles.split("|")]
        titles = ", ".join(fetched) if len(fetched) <= 5 else f"{len(fetched)} titles"
        print(f"| {row['run']} | {sum(requests.values())} ({per}) | {row['not_modified']} | {row['bytes']} | "
              f"{', '.join(row['fandom_api'])} | {titles or '-'} | {'yes' if row['new_version'] else 'no'} | "
              f"{row['seconds']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
