"""fetch_images against a real HTTP server on loopback, serving images made here with Pillow."""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import zlib
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from PIL import Image

from loretune.multimodal.images import ImageRecord, fetch_images, read_index, retry_transient, write_index

LIMITS = {"max_bytes": 200_000, "max_pixels": 300 * 300}


def _png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "JPEG")
    return buffer.getvalue()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served on 127.0.0.1; tests drop files in it and fetch them by URL."""
    root = tmp_path / "site"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def http_get_bytes(url: str) -> bytes:
    response = requests.get(url, timeout=5)
    response.raise_for_status()
    return response.content


def _fetch(urls: list[str], out_dir: Path, **overrides: int) -> tuple[list[ImageRecord], list[str]]:
    lines: list[str] = []
    records = fetch_images(urls, out_dir, http_get_bytes, log=lines.append, **{**LIMITS, **overrides})
    return records, lines


def test_good_png_is_stored_under_its_sha256(site: tuple[Path, str], tmp_path: Path) -> None:
    root, base = site
    data = _png(120, 80, (200, 10, 10))
    (root / "a.png").write_bytes(data)
    out = tmp_path / "artifact"

    [record], _ = _fetch([f"{base}/a.png"], out)

    sha = hashlib.sha256(data).hexdigest()
    assert record.error is None
    assert record.sha256 == sha
    assert record.file == f"blobs/{sha}.png"
    assert (out / record.file).read_bytes() == data
    assert (record.width, record.height) == (120, 80)
    assert record.mime == "image/png"
    assert record.bytes == len(data)


def test_jpeg_gets_jpg_extension_and_mime(site: tuple[Path, str], tmp_path: Path) -> None:
    root, base = site
    (root / "a.jpeg").write_bytes(_jpeg(50, 40, (0, 90, 0)))

    [record], _ = _fetch([f"{base}/a.jpeg"], tmp_path / "artifact")

    assert record.error is None
    assert record.file is not None and record.file.endswith(".jpg")
    assert record.mime == "image/jpeg"


def test_same_bytes_at_two_urls_stored_once_and_urls_deduplicated(
    site: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = site
    data = _png(30, 30, (1, 2, 3))
    (root / "one.png").write_bytes(data)
    (root / "two.png").write_bytes(data)
    out = tmp_path / "artifact"
    urls = [f"{base}/one.png", f"{base}/two.png", f"{base}/one.png"]

    records, _ = _fetch(urls, out)

    assert [r.url for r in records] == [f"{base}/one.png", f"{base}/two.png"]
    assert records[0].sha256 == records[1].sha256 is not None
    assert len(list((out / "blobs").iterdir())) == 1


def test_oversize_bytes_refused_before_decoding(tmp_path: Path) -> None:
    url = "http://example.invalid/huge.png"
    decoded: list[str] = []

    def get_bytes(u: str) -> bytes:
        decoded.append(u)
        return b"\x89PNG" + b"\0" * 1000  # not even a valid PNG: the size cap must refuse it first

    [record] = fetch_images([url], tmp_path, get_bytes, max_bytes=500, max_pixels=10_000, log=lambda _: None)

    assert record.sha256 is None and record.file is None
    assert record.error is not None
    assert url in record.error
    assert "over the limit of 500 bytes" in record.error


def test_too_many_pixels_refused(site: tuple[Path, str], tmp_path: Path) -> None:
    root, base = site
    (root / "big.png").write_bytes(_png(400, 300, (0, 0, 0)))  # small file, 120k pixels
    out = tmp_path / "artifact"

    [record], _ = _fetch([f"{base}/big.png"], out)

    assert record.error is not None
    assert f"{base}/big.png" in record.error
    assert "400x300" in record.error and "pixels" in record.error
    assert not any((out / "blobs").iterdir())


def test_pillow_decompression_bomb_reported_as_too_many_pixels(tmp_path: Path) -> None:
    """Above 2 * Image.MAX_IMAGE_PIXELS Pillow refuses before our own check; still a clear record."""
    bomb = _png(1, 1, (0, 0, 0))
    # Patch the IHDR width/height to 20000 x 20000 (400M pixels) and fix the chunk CRC.
    ihdr_data = struct.pack(">II", 20_000, 20_000) + bomb[24:29]
    bomb = bomb[:16] + ihdr_data + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr_data)) + bomb[33:]

    [record] = fetch_images(
        ["http://x/bomb.png"], tmp_path, lambda _: bomb,
        max_bytes=10_000, max_pixels=10**12, log=lambda _: None,
    )

    assert record.error is not None
    assert "http://x/bomb.png" in record.error
    assert "too many pixels" in record.error


@pytest.mark.parametrize(
    ("name", "payload", "expected"),
    [
        ("garbage.png", b"<html>not an image</html>" * 4, "Pillow could not identify"),
        ("truncated.png", _png(64, 64, (9, 9, 9))[:60], "corrupt or truncated"),
        ("truncated.jpg", _jpeg(64, 64, (9, 9, 9))[:300], "corrupt or truncated"),
    ],
    ids=["garbage", "truncated-png", "truncated-jpeg"],
)
def test_garbage_and_truncated_bytes_refused(
    site: tuple[Path, str], tmp_path: Path, name: str, payload: bytes, expected: str
) -> None:
    root, base = site
    (root / name).write_bytes(payload)

    [record], lines = _fetch([f"{base}/{name}"], tmp_path / "artifact")

    assert record.sha256 is None
    assert record.error is not None
    assert f"{base}/{name}" in record.error
    assert expected in record.error
    assert record.error in lines


def test_unsupported_format_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buffer, "BMP")

    [record] = fetch_images(
        ["http://x/a.bmp"], tmp_path, lambda _: buffer.getvalue(), log=lambda _: None, **LIMITS
    )

    assert record.error is not None and "PNG/JPEG/GIF/WEBP" in record.error


def test_one_failing_url_does_not_stop_the_others(site: tuple[Path, str], tmp_path: Path) -> None:
    root, base = site
    (root / "a.png").write_bytes(_png(10, 10, (1, 0, 0)))
    (root / "c.gif").write_bytes(_gif_bytes())
    urls = [f"{base}/a.png", f"{base}/missing.png", f"{base}/c.gif"]

    records, lines = _fetch(urls, tmp_path / "artifact")

    assert [r.url for r in records] == urls
    assert records[0].error is None
    assert records[1].error is not None and "missing.png" in records[1].error and "404" in records[1].error
    assert records[2].error is None and records[2].mime == "image/gif"
    assert any(f"{base}/missing.png" in line for line in lines)
    assert lines[-1] == "images: 3/3 fetched (1 failed)"


def _gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (12, 12), 3).save(buffer, "GIF")
    return buffer.getvalue()


def test_exception_from_get_bytes_becomes_a_record(tmp_path: Path) -> None:
    def get_bytes(url: str) -> bytes:
        raise TimeoutError("read timed out")

    [record] = fetch_images(["http://x/slow.png"], tmp_path, get_bytes, log=lambda _: None, **LIMITS)

    assert record.error == "image http://x/slow.png: fetch failed: TimeoutError: read timed out"


def test_index_round_trip(tmp_path: Path) -> None:
    good = _png(20, 10, (5, 5, 5))
    images = {"http://x/good.png": good, "http://x/bad.png": b"nope"}
    records = fetch_images(images, tmp_path, images.__getitem__, log=lambda _: None, **LIMITS)
    path = tmp_path / "images.parquet"

    write_index(records, path)

    assert read_index(path) == records
    assert [r.error is None for r in read_index(path)] == [True, False]


def test_index_round_trip_with_only_failures(tmp_path: Path) -> None:
    """All-null columns must still have their declared types, or readers downstream break."""
    records = [ImageRecord("http://x/a", None, None, None, None, None, None, "image http://x/a: boom")]
    path = tmp_path / "images.parquet"

    write_index(records, path)

    assert read_index(path) == records


def test_failures_are_marked_transient_or_final_and_survive_the_index(tmp_path: Path) -> None:
    class Busy(Exception):
        transient = True

    failures = {"http://x/timeout.png": TimeoutError("read timed out"), "http://x/busy.png": Busy("HTTP 503"),
                "http://x/gone.png": FileNotFoundError("HTTP 404")}
    data = {"http://x/bad.png": b"not an image"}

    def get_bytes(url: str) -> bytes:
        if url in failures:
            raise failures[url]
        return data[url]

    records = fetch_images([*failures, *data], tmp_path, get_bytes, log=lambda _: None, **LIMITS)
    assert {r.url: r.transient for r in records} == {
        "http://x/timeout.png": True, "http://x/busy.png": True, "http://x/gone.png": False, "http://x/bad.png": False}
    write_index(records, tmp_path / "images.parquet")
    assert read_index(tmp_path / "images.parquet") == records


def test_retry_fetches_only_transient_failures_and_keeps_the_rest(tmp_path: Path) -> None:
    kept, late = _png(10, 10, (1, 1, 1)), _png(12, 12, (2, 2, 2))
    down = {"http://x/late.png", "http://x/later.png"}
    asked: list[str] = []

    def get_bytes(url: str) -> bytes:
        asked.append(url)
        if url in down:
            raise TimeoutError("read timed out")
        if url == "http://x/gone.png":
            raise FileNotFoundError("HTTP 404")
        return {"http://x/kept.png": kept, "http://x/late.png": late, "http://x/later.png": late}[url]

    urls = ["http://x/kept.png", "http://x/late.png", "http://x/gone.png", "http://x/later.png"]
    first_dir = tmp_path / "first"
    first = fetch_images(urls, first_dir, get_bytes, log=lambda _: None, **LIMITS)
    assert [r.transient for r in first] == [False, True, False, True]

    asked.clear()
    same, settled = retry_transient(first, first_dir, tmp_path / "again", get_bytes, log=lambda _: None, **LIMITS)
    assert (same, settled) == (first, 0), "still down: nothing settled, the stored records stand"
    assert asked == ["http://x/late.png", "http://x/later.png"]

    down.discard("http://x/late.png")
    asked.clear()
    second_dir = tmp_path / "second"
    second, settled = retry_transient(first, first_dir, second_dir, get_bytes, log=lambda _: None, **LIMITS)
    assert asked == ["http://x/late.png", "http://x/later.png"], "the kept and the final ones are not asked again"
    assert settled == 1
    assert [r.url for r in second] == urls
    assert second[0] == first[0] and second[2] == first[2]
    assert second[1].error is None and second[1].sha256 == hashlib.sha256(late).hexdigest()
    assert second[3].transient and second[3].error is not None
    assert (second_dir / second[0].file).read_bytes() == kept, "the kept image travels into the new artifact"
    assert (second_dir / second[1].file).read_bytes() == late
