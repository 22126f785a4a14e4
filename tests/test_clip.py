"""CLIP embeddings with the project's tiny config: random weights offline, deterministic by seed."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loretune.multimodal.clip import ClipEncoder, embed_images, load_clip, read_features, write_features

TINY = "loretune-tiny-vit"


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five distinct 128x128 images, one of them a palette GIF to exercise RGB conversion."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    gif = folder / "4.gif"
    Image.new("P", (128, 96), 7).save(gif)
    paths.append(gif)
    return paths


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    return load_clip(TINY, None, seed=0, log=_quiet)


def test_tiny_config_builds_with_random_weights_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    lines: list[str] = []
    with caplog.at_level(logging.WARNING, logger="loretune.multimodal.clip"):
        encoder = load_clip(TINY, None, seed=3, log=lines.append)

    assert encoder.random_weights is True
    assert encoder.model_id == f"{TINY}:random-seed3"
    assert encoder.embed_dim == 64
    assert not encoder.model.training
    expected = (
        f"CLIP {TINY} has RANDOM weights (no pretrained weights configured); features carry no semantics"
    )
    assert any(expected in line and line.startswith("WARNING") for line in lines)
    assert any(r.levelno == logging.WARNING and expected in r.getMessage() for r in caplog.records)


def test_loading_does_not_disturb_the_callers_torch_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)

    load_clip(TINY, None, seed=0, log=_quiet)

    assert torch.equal(torch.rand(3), expected)


def test_embeddings_are_float32_unit_norm_in_input_order(encoder: ClipEncoder, images: list[Path]) -> None:
    embeddings = embed_images(encoder, images, batch_size=2, log=_quiet)

    assert embeddings.shape == (len(images), 64)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    reversed_embeddings = embed_images(encoder, images[::-1], batch_size=2, log=_quiet)
    np.testing.assert_allclose(reversed_embeddings[::-1], embeddings, atol=1e-6)


def test_different_images_give_different_embeddings(encoder: ClipEncoder, images: list[Path]) -> None:
    embeddings = embed_images(encoder, images, log=_quiet)

    similarity = embeddings @ embeddings.T
    off_diagonal = similarity[~np.eye(len(images), dtype=bool)]
    assert off_diagonal.max() < 1 - 1e-4


def test_same_seed_same_features_other_seed_different(images: list[Path]) -> None:
    first = embed_images(load_clip(TINY, None, seed=0, log=_quiet), images, log=_quiet)
    second = embed_images(load_clip(TINY, None, seed=0, log=_quiet), images, log=_quiet)
    other = embed_images(load_clip(TINY, None, seed=1, log=_quiet), images, log=_quiet)

    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other, atol=1e-3)


def test_weights_file_gives_content_based_id_and_its_weights(
    encoder: ClipEncoder, images: list[Path], tmp_path: Path
) -> None:
    weights = tmp_path / "tiny.pt"
    torch.save(encoder.model.state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    lines: list[str] = []

    loaded = load_clip(TINY, str(weights), seed=99, log=lines.append)

    assert loaded.random_weights is False
    assert loaded.model_id == f"{TINY}:file-sha256-{digest}"
    assert str(tmp_path) not in loaded.model_id
    assert not any("RANDOM" in line for line in lines)
    np.testing.assert_array_equal(
        embed_images(loaded, images, log=_quiet), embed_images(encoder, images, log=_quiet)
    )


def test_no_images_gives_an_empty_array(encoder: ClipEncoder) -> None:
    embeddings = embed_images(encoder, [], log=_quiet)

    assert embeddings.shape == (0, 64) and embeddings.dtype == np.float32


def test_progress_is_logged(encoder: ClipEncoder, images: list[Path]) -> None:
    lines: list[str] = []

    embed_images(encoder, images, batch_size=2, log=lines.append)

    assert lines == ["clip: 2/5 images embedded", "clip: 4/5 images embedded", "clip: 5/5 images embedded"]


def test_features_round_trip(encoder: ClipEncoder, images: list[Path], tmp_path: Path) -> None:
    embeddings = embed_images(encoder, images, log=_quiet)
    sha256s = [hashlib.sha256(p.read_bytes()).hexdigest() for p in images]
    path = tmp_path / "features.parquet"

    write_features(sha256s, encoder.model_id, embeddings, path)
    features = read_features(path)

    assert list(features) == sha256s
    for sha256, row in zip(sha256s, embeddings, strict=True):
        assert features[sha256].dtype == np.float32
        np.testing.assert_array_equal(features[sha256], row)


def test_write_features_refuses_mismatched_or_duplicate_keys(tmp_path: Path) -> None:
    embeddings = np.ones((2, 4), dtype=np.float32)

    with pytest.raises(ValueError, match="do not match"):
        write_features(["a"], "m", embeddings, tmp_path / "f.parquet")
    with pytest.raises(ValueError, match="duplicates"):
        write_features(["a", "a"], "m", embeddings, tmp_path / "f.parquet")
