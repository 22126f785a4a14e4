"""The images stage: fetch and validate every image (CLIP features are the next stage, tasks/features.py).

Images and the outside world. Which images an artifact holds depends on the documents and the
image limits, but also on the HTTP settings that decide *what* may be fetched (the response size
cap, the hosts a redirect may reach, robots.txt, the redirect limit), so those are part of the
version; user agent, timeouts, retries and the politeness interval only decide *how*, and are not.

It also depends on luck: a timeout or a 503 tonight says nothing about the image. So failures are
recorded as transient or final, and an artifact with transient failures is never a cache hit: the
next run fetches just those URLs again and, if any settled (an image now, or a final refusal),
publishes the result as the next attempt of the same inputs, a new version that everything
downstream picks up. This is the simplest design that keeps the store write-once and the version a
pure function of what the stage was asked, and still lets an outage heal: no mutable "latest"
pointer, no re-fetch of images already held, and an artifact without transient failures (final
ones included, such as a 404 or an oversized file) stays a plain cache hit, so a re-run with
nothing changed does no work.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from prefect import get_run_logger, task

from loretune.config import HttpConfig, ImagesConfig
from loretune.fingerprint import stage_code_version
from loretune.ingest import http, sources
from loretune.ingest.documents import read_documents
from loretune.multimodal import images
from loretune.store import ArtifactRef
from loretune.tasks.fanout import fan_out, width
from loretune.tasks.stage import NothingNew, StageCache, publish_stage

# The http settings that change which images the artifact can hold (see the module docstring).
IMAGES_HTTP_FIELDS = ("max_response_bytes", "allowed_hosts", "respect_robots", "max_redirects")


IMAGES = StageCache(stage="images", code=stage_code_version(__name__), http_fields=IMAGES_HTTP_FIELDS,
                    incomplete_while="transient_failures")


@task(name="images", cache_policy=IMAGES, persist_result=True)
def fetch_images(store: str, domain: str, documents: ArtifactRef, params: ImagesConfig, http_cfg: HttpConfig) -> ArtifactRef:
    logger = get_run_logger()
    docs = read_documents(documents.local_path() / "documents.parquet")
    urls = list(dict.fromkeys(url for doc in docs for url in doc.image_urls))
    if params.max_images is not None:
        urls = urls[: params.max_images]

    def summary(records: list[images.ImageRecord], requests: int) -> dict:
        failed = [r for r in records if r.error]
        for record in failed:
            logger.warning(record.error + (" (transient: tried again next run)" if record.transient else ""))
        return {"urls": len(records), "images": len({r.sha256 for r in records if r.sha256}),
                "failed": len(failed), "transient_failures": sum(r.transient for r in failed),
                "requests": requests}

    trusted = configured_hosts(documents)

    def build(out: Path) -> dict:
        batches = images.host_batches(urls, width())
        if len(batches) < 2:  # the thread runner, or one host: fetch in place
            session = http.PoliteSession(**http_cfg.model_dump(), configured_hosts=trusted)
            records = images.fetch_images(urls, out, session.get_bytes, max_bytes=params.max_bytes,
                                          max_pixels=params.max_pixels, log=logger.info)
            requests = session.requests_made
        else:  # on Dask: each host's URLs on one worker, with a session of its own
            logger.info("images: %s URLs in %s batches by host, across the Dask cluster", len(urls), len(batches))
            fetched = fan_out(partial(_fetch_batch, http_settings=http_cfg.model_dump(), params=params,
                                      configured_hosts=trusted), batches)
            records = images.keep_fetched([pairs for pairs, _ in fetched], urls, out)
            requests = sum(n for _, n in fetched)
        images.write_index(records, out / "images.parquet")
        return summary(records, requests)

    def retry(out: Path, previous: ArtifactRef) -> dict:
        folder = previous.local_path()
        session = http.PoliteSession(**http_cfg.model_dump(), configured_hosts=trusted)
        records, settled = images.retry_transient(images.read_index(folder / "images.parquet"), folder, out,
                                                  session.get_bytes, max_bytes=params.max_bytes,
                                                  max_pixels=params.max_pixels, log=logger.info)
        if not settled:
            raise NothingNew("every image that failed transiently failed transiently again; tried again next run")
        images.write_index(records, out / "images.parquet")
        return {**summary(records, session.requests_made), "settled": settled}

    return publish_stage(IMAGES, build, retry=retry)


def configured_hosts(documents: ArtifactRef) -> list[str]:
    """The hosts of the sources' configured URLs these documents came from (the manifest records each
    source's scope): an image there may be on a private address, as the sample server's are. Any
    other image host must resolve to public addresses (ingest/http.py). The manifest is part of the
    documents version, which the images version already depends on."""
    return sources.reported_hosts((documents.manifest() or {}).get("sources") or {})


def _fetch_batch(urls: list[str], http_settings: dict, params: ImagesConfig,
                 configured_hosts: list[str] = ()) -> tuple[list, int]:
    """One host batch, fetched wherever Dask runs it: (records with their bytes, requests made)."""
    session = http.PoliteSession(**http_settings, configured_hosts=configured_hosts)
    pairs = images.fetch_detached(urls, session.get_bytes, max_bytes=params.max_bytes, max_pixels=params.max_pixels,
                                  log=logging.getLogger(__name__).info)  # a Dask task has no Prefect run logger
    return pairs, session.requests_made
