"""File names that come from outside cannot leave their folder (path traversal).

Image blobs are named by content (`blobs/<sha256>.<ext>`), never by URL, but an images index is
data read back from the store and a Dask batch's records come from another machine, so every name
read from them is checked before it is read or written. The sample sources server turns request
paths into snapshot files; a traversal there answers 404.
"""

from __future__ import annotations

import hashlib
import io

import pytest
import requests
from PIL import Image

from loretune.multimodal.images import ImageRecord, blob_path, keep_fetched, retry_transient, write_index

SHA = "a" * 64


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name", [
    "../../etc/passwd", "/etc/passwd", f"blobs/../../{SHA}.png", f"blobs/{SHA}.png\x00.txt", f"blobs/{SHA}.exe",
    f"blobs/{SHA}/../../x.png", "blobs/" + "a" * 5000 + ".png", f"blobs\\..\\{SHA}.png", "", f"./blobs/{SHA}.png",
])
def test_a_blob_name_that_is_not_ours_is_refused(tmp_path, name):
    with pytest.raises(ValueError):
        blob_path(tmp_path, name)


def test_our_own_blob_names_are_accepted(tmp_path):
    assert blob_path(tmp_path, f"blobs/{SHA}.png") == tmp_path / "blobs" / f"{SHA}.png"


def test_a_symlinked_blobs_folder_cannot_lead_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "blobs").symlink_to(outside)
    with pytest.raises(ValueError, match="outside"):
        blob_path(folder, f"blobs/{SHA}.png")


def record(url: str, file: str | None, transient: bool = False) -> ImageRecord:
    failed = file is None
    return ImageRecord(url=url, sha256=None if failed else SHA, file=file, width=None if failed else 4,
                       height=None if failed else 4, mime=None if failed else "image/png",
                       bytes=None if failed else 10, error=f"image {url}: down" if failed else None,
                       transient=transient)


def test_a_tampered_index_cannot_make_a_retry_read_or_write_outside_its_folders(tmp_path):
    previous, out = tmp_path / "previous", tmp_path / "out"
    previous.mkdir()
    (tmp_path / "secret.png").write_bytes(b"not for the artifact")
    tampered = [record("http://x/a.png", "../secret.png"), record("http://x/b.png", None, transient=True)]
    write_index(tampered, previous / "images.parquet")
    data = png()
    with pytest.raises(ValueError, match="not an image blob name"):
        retry_transient(tampered, previous, out, lambda url: data, max_bytes=10_000, max_pixels=10_000,
                        log=lambda _: None)
    assert (tmp_path / "secret.png").read_bytes() == b"not for the artifact", "read nowhere, overwritten never"
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [f"{hashlib.sha256(data).hexdigest()}.png"]


def test_a_batch_record_naming_a_file_outside_the_artifact_is_refused(tmp_path):
    out = tmp_path / "out"
    bad = record("http://x/a.png", "blobs/../../escaped.png")
    with pytest.raises(ValueError):
        keep_fetched([[(bad, png())]], ["http://x/a.png"], out)
    assert not (tmp_path / "escaped.png").exists()
    good = record("http://x/a.png", f"blobs/{hashlib.sha256(png()).hexdigest()}.png")
    assert keep_fetched([[(good, png())]], ["http://x/a.png"], out) == [good]


@pytest.mark.parametrize("path", [
    "/fandom/images/..%2F..%2F..%2Fserver.py", "/fandom/wiki/..%2Fpages%2FNaruto.wiki",
    "/youtube/..%2F..%2Fserver.py.info.json", "/youtube/vi/..%2F..%2Fserver/x.png",
    "/sportskeeda/anime/..%2F..%2F..%2Fserver", "/sportskeeda/sitemap/..%2F..%2Fserver.xml",
    "/reddit/media/..%2F..%2Fserver.py", "/robots.txt/..%2Fserver.py",
])
def test_the_sample_server_serves_nothing_outside_its_snapshot(samples, path):
    response = requests.get(samples.base_url + path, timeout=5)
    assert response.status_code == 404 or b"SampleSourcesServer" not in response.content
    assert b"import " not in response.content and b"[[" not in response.content
