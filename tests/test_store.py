"""loretune.store: immutable, atomically published, manifest-committed artifacts."""

from __future__ import annotations

import datetime
import json
import stat
import uuid
from pathlib import Path
from types import SimpleNamespace

import fsspec
import pytest

import loretune.store as store_module
from loretune.store import MANIFEST, SCRATCH, ArtifactMissing, ArtifactRef, ArtifactStore, content_hash


def writer(files: dict[str, str], summary: dict | None = None):
    """A build function writing `files` (relative path -> text) and returning `summary`."""
    calls = []

    def build(out: Path):
        calls.append(out)
        for rel, text in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(text)
        return summary

    build.calls = calls
    return build


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


@pytest.fixture
def clock(monkeypatch):
    """Make `created_at` deterministic: each publish takes the next of the given times."""

    def install(*times: datetime.datetime):
        it = iter(times)
        fake = SimpleNamespace(now=lambda tz=None: next(it))
        monkeypatch.setattr(store_module, "dt", SimpleNamespace(datetime=fake, timezone=datetime.timezone))

    return install


@pytest.fixture
def memory_store(tmp_path, monkeypatch):
    monkeypatch.setenv("LORETUNE_CACHE", str(tmp_path / "cache"))
    root = f"memory://loretune-test-{uuid.uuid4().hex}"
    yield ArtifactStore(root)
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


T0 = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


# --- publish ----------------------------------------------------------------------------------

def test_publish_writes_data_and_manifest(store):
    build = writer({"data.txt": "hello", "sub/rows.jsonl": "{}\n{}\n"},
                   {"rows": 2, "ratio": 0.5, "model": "tiny", "random_weights": True, "tags": ["a"]})
    manifest = store.publish("dataset", "v1", build, {"inputs": {"docs": "documents@abc"}, "code_version": "c0"})

    folder = store.local_path("dataset", "v1")
    assert folder == Path(store.root) / "dataset" / "v1"
    assert tree(folder) == {"data.txt": "hello", "sub/rows.jsonl": "{}\n{}\n",
                            MANIFEST: (folder / MANIFEST).read_text()}
    stored = json.loads((folder / MANIFEST).read_text())
    assert stored == manifest == store.manifest("dataset", "v1")

    assert manifest["stage"] == "dataset" and manifest["version"] == "v1"
    assert manifest["inputs"] == {"docs": "documents@abc"} and manifest["code_version"] == "c0"
    created = datetime.datetime.fromisoformat(manifest["created_at"])
    assert created.tzinfo is not None
    assert abs(datetime.datetime.now(datetime.timezone.utc) - created).total_seconds() < 60
    assert manifest["counts"] == {"rows": 2, "ratio": 0.5, "files": 2, "bytes": len("hello") + len("{}\n{}\n")}
    assert manifest["details"] == {"model": "tiny", "random_weights": True, "tags": ["a"]}
    assert manifest["content_hash"] == content_hash(folder)
    assert len(build.calls) == 1


def test_publish_without_summary(store):
    manifest = store.publish("s", "v", writer({"a": "x"}), {})
    assert manifest["counts"] == {"files": 1, "bytes": 1}
    assert manifest["details"] == {}


def test_content_hash_tracks_names_and_bytes(tmp_path):
    def folder(name, files):
        root = tmp_path / name
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        return root

    base = content_hash(folder("base", {"a.txt": "1", "d/b.txt": "2"}))
    assert content_hash(folder("same", {"d/b.txt": "2", "a.txt": "1"})) == base
    assert content_hash(folder("with-manifest", {"a.txt": "1", "d/b.txt": "2", MANIFEST: "{}"})) == base
    assert content_hash(folder("bytes", {"a.txt": "1", "d/b.txt": "3"})) != base
    assert content_hash(folder("renamed", {"a.txt": "1", "e/b.txt": "2"})) != base


def test_content_hash_includes_nested_manifest_named_data_files(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "b" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "sub" / MANIFEST).write_text('{"x": 1}')
    (tmp_path / "b" / "sub" / MANIFEST).write_text('{"x": 2}')
    assert content_hash(tmp_path / "a") != content_hash(tmp_path / "b")


def test_failed_build_leaves_store_as_it_was(store):
    store.publish("dataset", "v0", writer({"keep.txt": "old"}, {"rows": 1}), {})
    before_manifest = store.manifest("dataset", "v0")
    before_tree = tree(store.local_path("dataset", "v0"))

    def build(out: Path):
        (out / "half.txt").write_text("partial")
        raise RuntimeError("stage crashed")

    with pytest.raises(RuntimeError, match="stage crashed"):
        store.publish("dataset", "v1", build, {})

    root = Path(store.root)
    assert not (root / "dataset" / "v1").exists()
    assert not store.exists("dataset", "v1")
    assert list((root / SCRATCH).iterdir()) == []
    assert store.manifest("dataset", "v0") == before_manifest
    assert tree(store.local_path("dataset", "v0")) == before_tree
    assert [m["version"] for m in store.versions("dataset")] == ["v0"]


def test_successful_publish_leaves_no_scratch(store):
    store.publish("s", "v", writer({"a": "x"}), {})
    assert list((Path(store.root) / SCRATCH).iterdir()) == []


def test_publishing_an_existing_version_keeps_the_first(store, clock):
    clock(T0, T0 + datetime.timedelta(hours=1))
    first = store.publish("s", "v", writer({"a.txt": "first"}, {"rows": 1}), {"run": 1})
    store.publish("s", "v", writer({"a.txt": "second!", "b.txt": "x"}, {"rows": 2}), {"run": 2})

    assert store.manifest("s", "v") == first
    assert tree(store.local_path("s", "v")) == {"a.txt": "first", MANIFEST: json.dumps(first, indent=2, sort_keys=True)}
    assert [m["version"] for m in store.versions("s")] == ["v"]
    assert list((Path(store.root) / SCRATCH).iterdir()) == []


def test_version_folder_without_manifest_is_absent_and_replaced(store):
    leftover = Path(store.root) / "s" / "v"
    leftover.mkdir(parents=True)
    (leftover / "junk.txt").write_text("half an artifact")

    assert not store.exists("s", "v")
    assert store.manifest("s", "v") is None
    assert store.versions("s") == []
    with pytest.raises(ArtifactMissing):
        store.local_path("s", "v")

    manifest = store.publish("s", "v", writer({"real.txt": "ok"}), {})
    assert store.exists("s", "v")
    assert tree(leftover) == {"real.txt": "ok", MANIFEST: (leftover / MANIFEST).read_text()}
    assert manifest["content_hash"] == content_hash(leftover)


def test_published_files_are_read_only(store):
    # Tests run as root, where writing a 0o444 file still succeeds: check the mode bits.
    store.publish("s", "v", writer({"a.txt": "x", "deep/er/b.txt": "y"}), {})
    folder = store.local_path("s", "v")
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"a.txt", "b.txt", MANIFEST}
    for p in files:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0, (p, oct(mode))


# --- listing ----------------------------------------------------------------------------------

def test_versions_lists_oldest_first(store, clock):
    clock(T0, T0 + datetime.timedelta(seconds=5), T0 + datetime.timedelta(days=1))
    for version in ("zz", "aa", "mm"):
        store.publish("s", version, writer({"f": version}), {})
    assert [m["version"] for m in store.versions("s")] == ["zz", "aa", "mm"]
    assert [m["created_at"] for m in store.versions("s")] == sorted(m["created_at"] for m in store.versions("s"))


def test_versions_published_in_the_same_second_keep_publish_order(memory_store, clock):
    clock(T0 + datetime.timedelta(microseconds=100), T0 + datetime.timedelta(microseconds=900))
    memory_store.publish("s", "b", writer({"f": "1"}), {})
    memory_store.publish("s", "a", writer({"f": "2"}), {})
    assert [m["version"] for m in memory_store.versions("s")] == ["b", "a"]


def test_versions_of_unknown_stage_is_empty(store):
    assert store.versions("nothing") == []


def test_versions_ignores_stray_files_in_a_stage_folder(store):
    store.publish("s", "v", writer({"a": "x"}), {})
    (Path(store.root) / "s" / "README").write_text("notes")
    assert [m["version"] for m in store.versions("s")] == ["v"]


def test_stages_ignores_dot_folders_and_files(store):
    assert store.stages() == []  # root does not exist yet
    store.publish("documents", "v", writer({"a": "x"}), {})
    store.publish("dataset", "v", writer({"a": "x"}), {})
    root = Path(store.root)
    (root / ".cache").mkdir()
    (root / "notes.txt").write_text("not a stage")
    assert (root / SCRATCH).is_dir()
    assert store.stages() == ["dataset", "documents"]


def test_missing_artifact_raises_artifact_missing(store):
    store.publish("dataset", "v1", writer({"a": "x"}), {})
    with pytest.raises(ArtifactMissing, match=r"dataset/v9") as err:
        store.local_path("dataset", "v9")
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(ArtifactMissing, match=r"nostage/v1"):
        store.ref("nostage", "v1").manifest()
    assert store.ref("dataset", "v1").manifest()["version"] == "v1"
    assert store.ref("dataset", "v1") == ArtifactRef(store.root, "dataset", "v1")


# --- a remote (fsspec) store ------------------------------------------------------------------

def test_memory_store_publish_and_download(memory_store, tmp_path):
    build = writer({"data.txt": "hello", "sub/rows.jsonl": "r1\n"}, {"rows": 1})
    manifest = memory_store.publish("dataset", "v1", build, {"code_version": "c"})

    assert not memory_store.is_local
    assert memory_store.exists("dataset", "v1")
    assert not memory_store.exists("dataset", "v2")
    assert memory_store.manifest("dataset", "v1") == manifest
    assert memory_store.stages() == ["dataset"]
    assert [m["version"] for m in memory_store.versions("dataset")] == ["v1"]

    local = memory_store.local_path("dataset", "v1")
    assert local.is_relative_to(tmp_path / "cache")
    assert tree(local) == {"data.txt": "hello", "sub/rows.jsonl": "r1\n",
                           MANIFEST: (local / MANIFEST).read_text()}
    assert json.loads((local / MANIFEST).read_text()) == manifest
    assert content_hash(local) == manifest["content_hash"]

    # Cached: a second call reuses the download and leaves no partial folders behind.
    assert memory_store.local_path("dataset", "v1") == local
    assert ArtifactRef(memory_store.root, "dataset", "v1").local_path() == local
    assert sorted(p.name for p in local.parent.iterdir()) == ["v1"]

    with pytest.raises(ArtifactMissing):
        memory_store.local_path("dataset", "v2")


def test_memory_store_failed_build_publishes_nothing(memory_store):
    def build(out: Path):
        (out / "half.txt").write_text("partial")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        memory_store.publish("s", "v", build, {})
    assert not memory_store.exists("s", "v")
    assert memory_store.stages() == []


def test_memory_store_uploads_nested_manifest_named_data_files(memory_store):
    memory_store.publish("exports", "v", writer({"model/manifest.json": '{"x": 1}', "model/w.bin": "w"}), {})
    local = memory_store.local_path("exports", "v")
    assert (local / "model" / MANIFEST).read_text() == '{"x": 1}'
