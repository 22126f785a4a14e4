"""The images and features stages' versions and caching: what is fingerprinted, and transient failures.

The stage runs under Prefect's test harness against an image server of its own on loopback, so a
test can take one picture down (503) or leave it missing (404) and see what the next run does.
"""

from __future__ import annotations

import io
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from loretune.config import HttpConfig, ImagesConfig
from loretune.fingerprint import digest
from loretune.ingest.documents import Document, write_documents
from loretune.multimodal import clip
from loretune.multimodal.images import read_index
from loretune.store import ArtifactRef, ArtifactStore
from loretune.tasks import features as features_task
from loretune.tasks import images as images_task
from loretune.tasks.stage import StageCache

HTTP = HttpConfig(max_retries=0, min_interval_s=0.0, connect_timeout_s=2, read_timeout_s=5)


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, "PNG")
    return buffer.getvalue()


# --- what is fingerprinted -----------------------------------------------------------------------

def images_inputs(**http: object) -> dict:
    return {"store": "/srv/store", "domain": "naruto", "documents": ArtifactRef("/srv/store", "documents", "0" * 16),
            "params": ImagesConfig(), "http_cfg": HttpConfig(**http)}


@pytest.mark.parametrize("setting", [{"max_response_bytes": 1_000}, {"allowed_hosts": ["static.wikia.nocookie.net"]},
                                     {"respect_robots": False}, {"max_redirects": 0}],
                         ids=lambda s: next(iter(s)))
def test_http_settings_that_decide_what_is_fetched_change_the_images_version(setting):
    assert images_task.IMAGES.version(images_inputs(**setting)) != images_task.IMAGES.version(images_inputs())


@pytest.mark.parametrize("setting", [{"user_agent": "someone-else/2"}, {"min_interval_s": 5.0},
                                     {"connect_timeout_s": 1.0}, {"read_timeout_s": 99.0}, {"max_retries": 0},
                                     {"backoff_s": 0.0}],
                         ids=lambda s: next(iter(s)))
def test_http_settings_that_only_decide_how_leave_the_images_version_alone(setting):
    assert images_task.IMAGES.version(images_inputs(**setting)) == images_task.IMAGES.version(images_inputs())


def test_a_stage_without_http_fields_ignores_http_cfg_entirely():
    plain = StageCache(stage="images", code="c")
    assert plain.version(images_inputs(max_response_bytes=1_000)) == plain.version(images_inputs())
    assert "http_cfg" not in plain.fingerprinted(images_inputs())


def test_editing_the_clip_architecture_file_changes_the_features_version(tmp_path, monkeypatch):
    configs = tmp_path / "model_configs"
    shutil.copytree(clip.MODEL_CONFIG_DIR, configs)
    monkeypatch.setattr(clip, "MODEL_CONFIG_DIR", configs)
    assert features_task.features_code() == features_task.FEATURES.code, "the copy hashes like the original"
    inputs = {"store": "/srv/store", "domain": "naruto", "images_ref": ArtifactRef("/srv/store", "images", "1" * 16),
              "params": {"clip_model": "loretune-tiny-vit"}}
    before = StageCache(stage="features", code=features_task.features_code()).version(inputs)

    arch = configs / "loretune-tiny-vit.json"
    original = arch.read_text()
    edited = original.replace('"layers": ', '"layers": 1', 1)
    assert edited != original, "the edit must change the architecture"
    arch.write_text(edited)
    after = StageCache(stage="features", code=features_task.features_code()).version(inputs)
    assert after != before


# --- the stage under Prefect ---------------------------------------------------------------------

class ImageSite:
    """PNG files by path; `down` paths answer 503, unknown paths 404; every GET is logged."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.down: set[str] = set()
        self.log: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                site.log.append(self.path)
                status, body = ((503, b"busy") if self.path in site.down else
                                (200, site.files[self.path]) if self.path in site.files else (404, b"no"))
                self.send_response(status)
                self.send_header("Content-Type", "image/png" if status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def image_requests(self) -> list[str]:
        return [p for p in self.log if p != "/robots.txt"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[ImageSite]:
    server = ImageSite()
    server.files = {"/a.png": png((200, 0, 0)), "/b.png": png((0, 200, 0))}
    yield server
    server.close()


def documents_version(store: Path, urls: list[str]) -> str:
    """A documents artifact whose one page shows `urls`, as ingest would have published it."""
    doc = Document(source="fandom", id="1", url="http://wiki/1", title="Page", text="text", image_urls=urls)
    version = digest({"urls": urls})
    # The wiki's configured URL is on the first image's server, as the sample server's is: a host the
    # config names, so its loopback address is fetched from (ingest/http.py).
    scope = {"api_url": urls[0].rsplit("/", 1)[0] + "/api.php"} if urls else {}
    ArtifactStore(store).publish("documents", version,
                                 lambda out: {"documents": write_documents([doc], out / "documents.parquet")},
                                 manifest_fields={"inputs": {}, "parameters": {}, "code_version": "test",
                                                  "sources": {"fandom": {"status": "ok", "scope": scope}}})
    return version


@pytest.fixture(scope="module")
def images_stage(prefect_server):
    """A flow that runs the images stage alone, as `prepare_data` does; returns version and state."""
    from prefect import flow

    from loretune.flows.stages import run_stage

    @flow(name="images-stage-test")
    def images_only(store: str, documents: str, max_response_bytes: int = HTTP.max_response_bytes) -> dict:
        ledger: dict[str, dict[str, str]] = {}
        run_stage(images_task.fetch_images, ledger, store=store, domain="test",
                  documents=ArtifactStore(store).ref("documents", documents), params=ImagesConfig(),
                  http_cfg=HTTP.model_copy(update={"max_response_bytes": max_response_bytes}))
        return ledger["images"]

    return images_only


def test_an_image_down_tonight_is_fetched_next_run_and_published_as_a_new_version(images_stage, site, tmp_path):
    store = tmp_path / "store"
    documents = documents_version(store, [f"{site.base}/a.png", f"{site.base}/b.png"])
    site.down = {"/b.png"}

    first = images_stage(str(store), documents)
    manifest = ArtifactStore(store).manifest("images", first["version"])
    assert first["state"] == "Completed"
    assert manifest["counts"]["failed"] == 1 and manifest["counts"]["transient_failures"] == 1

    site.down.clear()
    site.log.clear()
    second = images_stage(str(store), documents)
    assert second["state"] == "Completed" and second["version"] != first["version"]
    assert site.image_requests() == ["/b.png"], "only the image that failed is asked for again"
    retried = ArtifactStore(store).manifest("images", second["version"])
    assert retried["counts"]["failed"] == 0 and retried["counts"]["images"] == 2
    assert retried["retry_of"] == f"images@{first['version']}" and retried["attempt"] == 1
    folder = store / "images" / second["version"]
    assert all(r.error is None and (folder / r.file).is_file() for r in read_index(folder / "images.parquet"))

    site.log.clear()
    third = images_stage(str(store), documents)
    assert third == {"version": second["version"], "state": "Cached"}, "complete now: a plain cache hit"
    assert site.image_requests() == []


def test_with_no_failures_the_second_run_is_cached_and_asks_for_nothing(images_stage, site, tmp_path):
    store = tmp_path / "store"
    documents = documents_version(store, [f"{site.base}/a.png", f"{site.base}/b.png"])
    first = images_stage(str(store), documents)
    assert first["state"] == "Completed"
    site.log.clear()
    second = images_stage(str(store), documents)
    assert second == {"version": first["version"], "state": "Cached"}
    assert site.log == []


def test_a_final_failure_is_kept_and_still_cached(images_stage, site, tmp_path):
    store = tmp_path / "store"
    documents = documents_version(store, [f"{site.base}/a.png", f"{site.base}/missing.png"])
    first = images_stage(str(store), documents)
    manifest = ArtifactStore(store).manifest("images", first["version"])
    assert manifest["counts"]["failed"] == 1 and manifest["counts"]["transient_failures"] == 0
    site.log.clear()
    assert images_stage(str(store), documents) == {"version": first["version"], "state": "Cached"}
    assert site.log == [], "a 404 is not asked again every night"


def test_an_image_still_down_is_tried_again_but_publishes_nothing(images_stage, site, tmp_path):
    store = tmp_path / "store"
    documents = documents_version(store, [f"{site.base}/a.png", f"{site.base}/b.png"])
    site.down = {"/b.png"}
    first = images_stage(str(store), documents)
    site.log.clear()
    second = images_stage(str(store), documents)
    assert second == {"version": first["version"], "state": "Completed"}, "tried again, nothing new to publish"
    assert site.image_requests() == ["/b.png"]
    assert [m["version"] for m in ArtifactStore(store).versions("images")] == [first["version"]]


def test_changing_max_response_bytes_changes_the_version_and_refetches(images_stage, site, tmp_path):
    store = tmp_path / "store"
    documents = documents_version(store, [f"{site.base}/a.png", f"{site.base}/b.png"])
    first = images_stage(str(store), documents)
    small = images_stage(str(store), documents, max_response_bytes=10)
    assert small["state"] == "Completed" and small["version"] != first["version"]
    manifest = ArtifactStore(store).manifest("images", small["version"])
    assert manifest["counts"]["failed"] == 2 and manifest["counts"]["transient_failures"] == 0
    assert manifest["parameters"]["http_cfg"] == {"max_response_bytes": 10, "allowed_hosts": [],
                                                  "respect_robots": True, "max_redirects": 5}


def test_an_image_on_an_unconfigured_private_address_is_a_final_failure_and_the_rest_are_kept(images_stage, site,
                                                                                               tmp_path):
    """Only 127.0.0.1 is configured (the wiki's URL): `localhost`, the same machine under another
    name, is what a hostile page would link to, and is refused for good; nothing is asked of it."""
    store = tmp_path / "store"
    port = site.base.rsplit(":", 1)[1]
    smuggled = f"http://localhost:{port}/b.png"
    documents = documents_version(store, [f"{site.base}/a.png", smuggled])
    first = images_stage(str(store), documents)
    assert first["state"] == "Completed"
    manifest = ArtifactStore(store).manifest("images", first["version"])
    assert manifest["counts"]["images"] == 1 and manifest["counts"]["failed"] == 1
    assert manifest["counts"]["transient_failures"] == 0, "refused for good: not tried again next run"
    records = {r.url: r for r in read_index(store / "images" / first["version"] / "images.parquet")}
    assert "loopback address" in records[smuggled].error and records[smuggled].transient is False
    assert site.image_requests() == ["/a.png"]
    assert images_stage(str(store), documents) == {"version": first["version"], "state": "Cached"}
