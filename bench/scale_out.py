"""Past one machine, measured side by side in one run: the wide stages on threads against Dask, and
publishing a stage to S3 (moto_server on loopback) against the local store.

    python bench/scale_out.py [--rounds 2] [--workers 2] [--json PATH]

1. A cold `refresh` (ingest, images, features, dataset) against the sample sources server, on
   `runtime.task_runner: thread` and on `dask` with `--workers` local worker processes, alternated
   `--rounds` times, each run with a fresh store and HTTP cache. Prints each run's wall time and
   every stage task's time (from the Prefect API), the medians and the ratio.
2. The dataset artifact that refresh built, published into a fresh local store and into a fresh
   s3:// prefix, alternated `--rounds` times; then read back (`local_path`) into a fresh cache.
   Prints the times and the ratios.

Offline the sample server is one host, so ingest's sources and the images stay in one group each
(politeness: a host's requests are never split across workers); only CLIP features spread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(tempfile.mkdtemp(prefix="loretune-bench-scale-"))
os.environ["LORETUNE_HOME"] = str(ROOT / "home")
os.environ.setdefault("PREFECT_HOME", str(ROOT / "prefect"))
os.environ.setdefault("LORETUNE_MODEL_CACHE", str(ROOT / "model-cache"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_times(flow_run_id: str) -> dict[str, float]:
    """Seconds per stage task of a flow run and its subflows, from the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = [flow_run_id] + [str(r.id) for r in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))]
        times: dict[str, float] = {}
        for run in runs:
            for task_run in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run]})):
                if task_run.total_run_time:
                    times[task_run.name.rsplit("-", 1)[0]] = round(task_run.total_run_time.total_seconds(), 2)
    return times


def one_refresh(samples, runner: str, workers: int, n: int) -> dict:
    from loretune.flows.refresh import refresh

    home = ROOT / f"home-{runner}-{n}"
    os.environ["LORETUNE_HOME"] = str(home)  # a fresh HTTP cache: every run is cold
    started = time.perf_counter()
    state = refresh(overrides={"store": str(home / "store"), "runtime.task_runner": runner,
                               "runtime.dask_workers": workers}, sample_sources=samples.base_url, return_state=True)
    wall = time.perf_counter() - started
    result = state.result()
    return {"runner": runner, "wall_s": round(wall, 2), "stages": stage_times(str(state.state_details.flow_run_id)),
            "versions": {s: v["version"] for s, v in result["stages"].items()}, "store": str(home / "store")}


def cluster_overhead(workers: int) -> dict:
    """What a Dask run pays before its first stage: starting the cluster, and each worker importing
    the stage modules (torch, transformers, open_clip) that the flow's process has already imported."""
    from distributed import Client, LocalCluster

    started = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        up = time.perf_counter() - started
        client.run(lambda: __import__("loretune.flows.stages"))
        imported = time.perf_counter() - started - up
    return {"start_s": round(up, 2), "import_s": round(imported, 2)}


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start on {endpoint}") from None
            time.sleep(0.2)
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    return server, endpoint


def publish_times(source: Path, rounds: int) -> list[dict]:
    """The artifact at `source` published into a fresh local store and a fresh s3:// prefix, then
    read back into a fresh machine-local cache."""
    import fsspec

    from loretune.store import MANIFEST, ArtifactStore

    fsspec.filesystem("s3").mkdir("bench")
    rows = []
    for n in range(rounds):
        for kind, root in (("local", str(ROOT / f"publish-local-{n}")), ("s3", f"s3://bench/publish-{n}")):
            store = ArtifactStore(root)

            def build(out: Path) -> dict:
                for path in source.rglob("*"):
                    if path.is_file() and path.name != MANIFEST:
                        target = out / path.relative_to(source)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, target)
                return {}

            started = time.perf_counter()
            manifest = store.publish("dataset", f"bench{n}", build, manifest_fields={})
            published = time.perf_counter() - started
            os.environ["LORETUNE_CACHE"] = str(ROOT / f"read-cache-{kind}-{n}")  # a fresh machine's cache
            started = time.perf_counter()
            ArtifactStore(root).local_path("dataset", f"bench{n}")
            read = time.perf_counter() - started
            rows.append({"store": kind, "publish_s": round(published, 3), "read_s": round(read, 3),
                         "files": manifest["counts"]["files"], "bytes": manifest["counts"]["bytes"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from loretune.samples.server import SampleSourcesServer

    with prefect_test_harness(server_startup_timeout=180), SampleSourcesServer(port=free_port()) as samples:
        runs = [one_refresh(samples, runner, args.workers, n) for n in range(args.rounds)
                for runner in ("thread", "dask")]
    for run in runs:
        print(f"refresh on {run['runner']:6s}: {run['wall_s']:6.1f} s  stages: "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(run["stages"].items())))
    overhead = cluster_overhead(args.workers)
    print(f"a local Dask cluster of {args.workers} processes: started in {overhead['start_s']:.1f} s, its workers "
          f"imported the stages' modules in {overhead['import_s']:.1f} s more")
    same = len({json.dumps(r["versions"], sort_keys=True) for r in runs}) == 1
    medians = {r: statistics.median(x["wall_s"] for x in runs if x["runner"] == r) for r in ("thread", "dask")}
    print(f"cold refresh, median of {args.rounds}: thread {medians['thread']:.1f} s, dask ({args.workers} workers) "
          f"{medians['dask']:.1f} s; dask/thread = {medians['dask'] / medians['thread']:.2f}; "
          f"same versions on both: {same}")

    server, endpoint = start_moto()
    try:
        dataset = Path(runs[0]["store"]) / "dataset" / runs[0]["versions"]["dataset"]
        publishing = publish_times(dataset, args.rounds)
    finally:
        server.terminate()
        server.wait(timeout=30)
    for row in publishing:
        print(f"publish dataset ({row['files']} files, {row['bytes'] / 1e6:.2f} MB) to {row['store']:5s}: "
              f"{row['publish_s']:.3f} s, read back {row['read_s']:.3f} s")
    med = {k: {m: statistics.median(r[m] for r in publishing if r["store"] == k) for m in ("publish_s", "read_s")}
           for k in ("local", "s3")}
    print(f"publish s3/local = {med['s3']['publish_s'] / med['local']['publish_s']:.1f} (moto_server on loopback: "
          f"no network); reading back: local is in place, s3 downloads once to the machine's cache in "
          f"{med['s3']['read_s']:.3f} s")
    if args.json:
        args.json.write_text(json.dumps({"refresh": runs, "medians_s": medians, "same_versions": same,
                                         "dask_overhead_s": overhead,
                                         "publish": publishing, "publish_medians_s": med}, indent=2))


if __name__ == "__main__":
    main()
