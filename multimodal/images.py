"""Fetch images, refuse the ones that are unsafe or unusable, and store the rest by content.

Images are stored as ``blobs/<sha256>.<ext>`` so the same picture reached through two URLs is kept
once, and everything downstream (CLIP features, dataset references) can key on content rather than
on where the picture happened to be found.

A failure is either final (refused content, a 404, a redirect off-site) or transient (a timeout, a
dropped connection, 429 or 5xx), recorded as such, so a later run can `retry_transient` just those
URLs instead of keeping a passing outage forever or fetching every image again.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from loretune.failpoints import failpoint

# Format name as Pillow reports it -> file extension. Anything else is refused: these are the formats
# every consumer (CLIP preprocessing, the chat UI, browsers) can read.
ALLOWED_FORMATS: dict[str, str] = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "WEBP": "webp"}

# The only file names an index may hold: content-addressed, never anything taken from a URL.
BLOB_FILE = re.compile(r"blobs/[0-9a-f]{64}\.(?:%s)" % "|".join(ALLOWED_FORMATS.values()))

INDEX_SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("sha256", pa.string()),
        ("file", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("mime", pa.string()),
        ("bytes", pa.int64()),
        ("error", pa.string()),
        ("transient", pa.bool_()),
    ]
)


@dataclass(frozen=True)
class ImageRecord:
    url: str
    sha256: str | None  # None when the image failed
    file: str | None  # relative to the artifact folder: "blobs/<sha256>.<ext>"
    width: int | None
    height: int | None
    mime: str | None
    bytes: int | None
    error: str | None  # why it was refused or failed, naming the url
    transient: bool = False  # the failure may pass (timeout, 5xx, ...): worth fetching again later


@dataclass(frozen=True)
class CheckedImage:
    """What check_image learned while validating; format is one of ALLOWED_FORMATS."""

    width: int
    height: int
    format: str


class ImageRefused(ValueError):
    """An image we fetched but will not keep; the message says why."""


def is_transient_error(exc: BaseException) -> bool:
    """Whether a `get_bytes` failure may pass if tried later.

    An exception that knows says so in a `transient` attribute (the HTTP client's `SourceError`
    does); otherwise timeouts and connection errors are transient and anything else is final, so an
    unknown failure is not retried night after night.
    """
    transient = getattr(exc, "transient", None)
    if isinstance(transient, bool):
        return transient
    return isinstance(exc, (TimeoutError, ConnectionError))


def fetch_images(
    urls: Iterable[str],
    out_dir: Path,
    get_bytes: Callable[[str], bytes],
    *,
    max_bytes: int,
    max_pixels: int,
    log: Callable[[str], None] = print,
) -> list[ImageRecord]:
    """Fetch each distinct URL once, keep the valid images under ``out_dir/blobs``.

    One record per distinct URL, in the order each URL first appears, so the output is the same
    for the same input. A failing URL becomes a record with ``error`` set; it never stops the rest,
    because one broken picture on a wiki page should not cost the whole night's images.
    """
    unique_urls = list(dict.fromkeys(urls))
    blob_dir = out_dir / "blobs"
    blob_dir.mkdir(parents=True, exist_ok=True)
    total = len(unique_urls)
    every = max(1, total // 10)  # about ten progress lines per run, however many images
    records: list[ImageRecord] = []
    failed = 0
    for done, url in enumerate(unique_urls, start=1):
        record = _fetch_one(url, out_dir, get_bytes, max_bytes=max_bytes, max_pixels=max_pixels)
        if record.error is not None:
            failed += 1
            log(record.error)
        records.append(record)
        failpoint("images:between-fetches")
        if done % every == 0 or done == total:
            log(f"images: {done}/{total} fetched ({failed} failed)")
    return records


def host_batches(urls: Iterable[str], count: int) -> list[list[str]]:
    """The distinct URLs in at most `count` batches to fetch side by side, never a host split.

    Politeness (the per-host interval, robots.txt, Retry-After) lives in one HTTP session, so each
    host's URLs stay in one batch, in their order; hosts go to the emptiest batch, most URLs first,
    so the batches come out even where the hosts allow it. The same URLs give the same batches.
    """
    by_host: dict[str, list[str]] = {}
    for url in dict.fromkeys(urls):
        by_host.setdefault((urlsplit(url).hostname or "").lower(), []).append(url)
    batches: list[list[str]] = [[] for _ in range(max(1, min(count, len(by_host))))]
    for host_urls in sorted(by_host.values(), key=len, reverse=True):  # stable: ties keep first appearance
        min(batches, key=len).extend(host_urls)
    return [b for b in batches if b]


def fetch_detached(
    urls: list[str], get_bytes: Callable[[str], bytes], *, max_bytes: int, max_pixels: int,
    log: Callable[[str], None] = print,
) -> list[tuple[ImageRecord, bytes | None]]:
    """`fetch_images` for a batch fetched somewhere else (a Dask worker): each record with its bytes,
    to be kept by `keep_fetched` where the artifact is built."""
    with tempfile.TemporaryDirectory(prefix="images-batch-") as folder:
        records = fetch_images(urls, Path(folder), get_bytes, max_bytes=max_bytes, max_pixels=max_pixels, log=log)
        return [(r, blob_path(Path(folder), r.file).read_bytes() if r.file else None) for r in records]


def keep_fetched(batches: list[list[tuple[ImageRecord, bytes | None]]], urls: Iterable[str],
                 out_dir: Path) -> list[ImageRecord]:
    """The batches' images stored under ``out_dir/blobs``; one record per distinct URL in the order
    of `urls`, as `fetch_images` gives, so the artifact does not depend on how it was fetched."""
    (out_dir / "blobs").mkdir(parents=True, exist_ok=True)
    by_url = {}
    for record, data in (pair for batch in batches for pair in batch):
        if record.file is not None and data is not None:
            _store_once(blob_path(out_dir, record.file), data)
        by_url[record.url] = record
    return [by_url[url] for url in dict.fromkeys(urls)]


def retry_transient(
    previous: list[ImageRecord],
    previous_dir: Path,
    out_dir: Path,
    get_bytes: Callable[[str], bytes],
    *,
    max_bytes: int,
    max_pixels: int,
    log: Callable[[str], None] = print,
) -> tuple[list[ImageRecord], int]:
    """``previous`` with every transient failure fetched again: (records, how many came good).

    Only those URLs go on the wire; kept images and final failures are taken as they were (their
    blobs copied from ``previous_dir``), since nothing that decides them has changed. "Came good"
    counts the URLs whose outcome is now settled, an image or a final refusal; a URL that failed
    transiently again does not count. When the count is 0 the caller has nothing new to keep and
    ``out_dir`` may be thrown away, so blobs are only copied once something came good.
    """
    retry = [r.url for r in previous if r.error is not None and r.transient]
    log(f"images: fetching again the {len(retry)} of {len(previous)} images that failed transiently last time")
    again = {r.url: r for r in fetch_images(retry, out_dir, get_bytes, max_bytes=max_bytes,
                                             max_pixels=max_pixels, log=log)}
    settled = sum(1 for r in again.values() if not (r.error is not None and r.transient))
    if settled == 0:
        return previous, 0
    (out_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for record in previous:
        if record.url not in again and record.file is not None:
            _store_once(blob_path(out_dir, record.file), blob_path(previous_dir, record.file).read_bytes())
    return [again.get(r.url, r) for r in previous], settled


def blob_path(folder: Path, file: str) -> Path:
    """`folder / file` for a record's `file`, which must be a blob name of ours (`blobs/<sha256>.<ext>`)
    inside `folder`: an index or a batch that says `../../etc/x`, an absolute path or a NUL is refused
    rather than read or written. Names are never taken from URLs, but an index is data read back."""
    if not isinstance(file, str) or not BLOB_FILE.fullmatch(file):
        raise ValueError(f"not an image blob name: {file!r}")
    path = folder / file
    if not path.resolve().is_relative_to(folder.resolve()):  # a symlinked blobs/ pointing elsewhere
        raise ValueError(f"image blob {file!r} is outside {folder}")
    return path


def _fetch_one(
    url: str, out_dir: Path, get_bytes: Callable[[str], bytes], *, max_bytes: int, max_pixels: int
) -> ImageRecord:
    """Fetch, check and store one image, turning any failure into a record instead of an exception."""
    try:
        data = get_bytes(url)
    except Exception as exc:  # noqa: BLE001 - whatever the transport raised, it is this url's failure
        return _failed(url, f"fetch failed: {type(exc).__name__}: {exc}", transient=is_transient_error(exc))
    try:
        checked = check_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    except ImageRefused as exc:
        return _failed(url, f"refused: {exc}")
    sha256 = hashlib.sha256(data).hexdigest()
    file = f"blobs/{sha256}.{ALLOWED_FORMATS[checked.format]}"
    _store_once(out_dir / file, data)
    return ImageRecord(
        url=url,
        sha256=sha256,
        file=file,
        width=checked.width,
        height=checked.height,
        mime=Image.MIME[checked.format],
        bytes=len(data),
        error=None,
    )


def check_image(data: bytes, *, max_bytes: int, max_pixels: int) -> CheckedImage:
    """Decide whether ``data`` is an image we keep; raise ImageRefused saying why not.

    The byte cap comes before any decoding and the pixel cap before decoding pixel data, because
    those are the two ways a hostile or broken file costs memory. ``verify()`` catches corrupt PNGs
    cheaply, but it checks little for JPEG/GIF/WEBP, so the image is also fully loaded: a truncated
    JPEG found here is one record's error, found later it would crash CLIP feature extraction.
    """
    if len(data) > max_bytes:
        raise ImageRefused(f"{len(data)} bytes is over the limit of {max_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as image:
            image.verify()
        with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as image:
            width, height = image.size
            # Pillow calls a JPEG with extra frames (phone cameras) MPO; it is still a JPEG file
            # that every JPEG decoder reads, so it is kept as one.
            image_format = "JPEG" if image.format == "MPO" else image.format
            if width * height > max_pixels:
                raise ImageRefused(
                    f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels} pixels"
                )
            image.load()
    except ImageRefused:
        raise
    except Image.UnidentifiedImageError:
        raise ImageRefused(
            f"not a {'/'.join(ALLOWED_FORMATS)} image (Pillow could not identify {len(data)} bytes)"
        ) from None
    except Image.DecompressionBombError as exc:
        # Pillow refuses on its own above 2 * Image.MAX_IMAGE_PIXELS, before our own check can run.
        # That limit is a process-wide global, so it is reported here rather than changed under
        # other threads (Prefect's thread-pool runner).
        raise ImageRefused(f"too many pixels (Pillow's decompression-bomb check: {exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated and corrupt files through all of these.
        raise ImageRefused(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from None
    if image_format not in ALLOWED_FORMATS:  # formats= should already exclude it; belt and braces
        raise ImageRefused(f"format {image_format} is not one of {', '.join(ALLOWED_FORMATS)}")
    return CheckedImage(width=width, height=height, format=image_format)


def _store_once(path: Path, data: bytes) -> None:
    """Write a blob unless it is already there; content addressing makes an existing file correct.

    Written to a temporary name and renamed, so a crash never leaves a half blob that a later run
    would then trust because its name looks right.
    """
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _failed(url: str, reason: str, transient: bool = False) -> ImageRecord:
    return ImageRecord(
        url=url, sha256=None, file=None, width=None, height=None, mime=None, bytes=None,
        error=f"image {url}: {reason}", transient=transient,
    )


def write_index(records: list[ImageRecord], path: Path) -> None:
    """Write one parquet row per URL, failures included, so the artifact shows what was refused."""
    columns = {name: [getattr(r, name) for r in records] for name in INDEX_SCHEMA.names}
    pq.write_table(pa.table(columns, schema=INDEX_SCHEMA), path)


def read_index(path: Path) -> list[ImageRecord]:
    return [ImageRecord(**row) for row in pq.read_table(path).to_pylist()]
