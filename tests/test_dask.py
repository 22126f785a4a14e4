"""The wide stages on Dask (runtime.task_runner: dask): the same versions as on threads, still polite.

The fast tests pin how work is cut up (sources by server, images by host, CLIP features by whole
batches); the slow one runs the data stages of `refresh` on both runners against the sample server
and reads the gaps between its requests from the server's own log.
"""

from __future__ import annotations

import random
from urllib.parse import urlsplit

import pytest
from recipes import QUICK_OPEN, TINY

from loretune.ingest.sources import host_groups
from loretune.multimodal.clip import whole_batches
from loretune.multimodal.images import host_batches
from loretune.store import ArtifactStore


def test_sources_that_share_a_server_are_one_group_and_keep_their_order():
    scopes = {"fandom": {"api_url": "https://naruto.fandom.com/api.php"},
              "reddit": {"oauth_url": "https://oauth.reddit.com", "reddit_url": "https://www.reddit.com"},
              "youtube": {"info_url": "http://naruto.fandom.com:8080/yt"},  # the same host on another port
              "sportskeeda": {"base_url": "https://www.sportskeeda.com", "sitemap_urls": ["https://www.reddit.com/x"]},
              "plain": {}}
    assert host_groups(scopes) == [["fandom", "youtube"], ["reddit", "sportskeeda"], ["plain"]]
    # A source that talks to two groups' servers joins them into one.
    assert host_groups({"a": {"u": "http://x"}, "b": {"u": "http://y"}, "c": {"u": ["http://y", "http://x"]}}) \
        == [["a", "b", "c"]]
    # The sample server is one host for every source: offline, they run one after another.
    sample = {name: {"url": f"http://127.0.0.1:8765/{name}"} for name in ("fandom", "reddit", "youtube", "sportskeeda")}
    assert host_groups(sample) == [["fandom", "reddit", "youtube", "sportskeeda"]]


def test_image_batches_never_split_a_host_and_are_the_same_every_time():
    rng = random.Random(0)
    for _ in range(200):
        urls = [f"http://h{rng.randrange(6)}.example/{rng.randrange(30)}.png" for _ in range(rng.randrange(40))]
        count = rng.randrange(1, 5)
        batches = host_batches(urls, count)
        assert batches == host_batches(list(urls), count)
        assert len(batches) <= count and all(batches)
        assert sorted(u for b in batches for u in b) == sorted(set(urls))  # every URL once
        owner = {urlsplit(u).hostname: i for i, b in enumerate(batches) for u in b}
        assert all(owner[urlsplit(u).hostname] == i for i, b in enumerate(batches) for u in b)
        for batch in batches:  # a host's URLs keep the order they first appear in
            for host in {urlsplit(u).hostname for u in batch}:
                mine = [u for u in batch if urlsplit(u).hostname == host]
                assert mine == sorted(mine, key=urls.index)


def test_feature_chunks_are_whole_clip_batches_in_order():
    items = [f"{i:03d}" for i in range(37)]
    for count in (1, 2, 3, 8):
        chunks = whole_batches(items, 16, count)
        assert [x for c in chunks for x in c] == items and len(chunks) <= count
        assert all(len(c) % 16 == 0 for c in chunks[:-1])  # so each image meets the batch it meets in place
    assert whole_batches([], 16, 2) == []


INTERVAL_S = 0.2  # the politeness interval the Dask run keeps; loopback's default is none


@pytest.mark.slow
def test_refresh_on_dask_publishes_what_threads_publish_and_keeps_each_hosts_interval(prefect_server, samples,
                                                                                       tmp_path):
    from loretune.flows.refresh import refresh

    def run(runner: str, **extra):
        store = tmp_path / runner
        result = refresh(overrides={"store": str(store), "runtime.task_runner": runner, "runtime.dask_workers": 2,
                                    **extra}, sample_sources=samples.base_url)
        return ArtifactStore(store), result["stages"]

    threads, on_threads = run("thread")
    samples.clear_log()
    dask, on_dask = run("dask", **{"http.min_interval_s": INTERVAL_S})
    requests = samples.requests

    assert {s: v["version"] for s, v in on_dask.items()} == {s: v["version"] for s, v in on_threads.items()}
    assert all(v["state"] == "Completed" for v in on_dask.values()), on_dask
    for stage, entry in on_dask.items():  # the same bytes, not only the same names (documents record fetch times)
        if stage == "documents":
            continue
        assert dask.manifest(stage, entry["version"])["content_hash"] == \
            threads.manifest(stage, entry["version"])["content_hash"], stage

    # Every request that went through loretune's polite session (praw has its own client, and
    # robots.txt is asked before the interval applies) came at least the interval after the one
    # before it to this one host, however the stages were spread over the workers.
    polite = [r for r in requests if not r["path"].startswith("/reddit/") and r["path"] != "/robots.txt"]
    assert len(polite) > 40
    gaps = sorted(((b["at"] - a["at"], a, b) for a, b in zip(polite, polite[1:])), key=lambda g: g[0])
    assert gaps[0][0] >= 0.9 * INTERVAL_S, gaps[:3]  # 0.9: a stamp is when the server thread got to it


@pytest.mark.slow
def test_sweep_points_train_side_by_side_on_dask(prefect_server, samples, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from loretune.flows.sweep import sweep

    short = {**TINY, **QUICK_OPEN, "training.max_steps": 4, "training.save_steps": 2, "export.enabled": False,
             "store": str(tmp_path / "store"), "runtime.task_runner": "dask", "runtime.dask_workers": 2}
    result = sweep(grid={"training.lora.r": [4, 8]}, overrides=short, sample_sources=samples.base_url)

    assert [run["point"] for run in result["runs"]] == [{"training.lora.r": 4}, {"training.lora.r": 8}]
    assert result["runs"][0]["stages"]["dataset"] == result["runs"][1]["stages"]["dataset"]  # one dataset
    assert result["runs"][0]["stages"]["checkpoints"]["version"] != result["runs"][1]["stages"]["checkpoints"]["version"]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=" sweep: ")))
    spans = sorted((r.start_time, r.end_time) for r in runs)
    assert len(spans) == 2 and spans[1][0] < spans[0][1], spans  # the second point started before the first ended
