"""CLIP image embeddings with open_clip, keyed by (image sha256, CLIP model id).

With no weights configured the model is built with random weights from a fixed seed. That keeps the
whole pipeline runnable offline and deterministic, but the features then mean nothing, so it is said
loudly and recorded in the model id: features from random weights can never be mistaken for real ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from loretune.hashing import file_sha256

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"

FEATURES_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("model_id", pa.string()),
        ("embedding", pa.list_(pa.float32())),
    ]
)


@dataclass
class ClipEncoder:
    model: torch.nn.Module
    preprocess: Callable
    model_id: str
    random_weights: bool
    embed_dim: int


def load_clip(
    model_name: str, pretrained: str | None, seed: int = 0, log: Callable[[str], None] = print
) -> ClipEncoder:
    """Build a CLIP model for image embeddings.

    ``pretrained`` is an open_clip tag (fetched from the hub at run time, as in production) or a
    local weights file; None means random weights from ``seed``. The model id names the weights, not
    just the architecture, because features from different weights are different features.
    """
    _register_project_configs()
    if pretrained is None:
        model, preprocess = _build_random(model_name, seed)
        model_id = f"{model_name}:random-seed{seed}"
        message = (
            f"CLIP {model_name} has RANDOM weights (no pretrained weights configured); "
            "features carry no semantics"
        )
        # Both: the callback is where the run's progress is read, the stdlib logger carries the level.
        logger.warning(message)
        log(f"WARNING: {message}")
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        model_id = f"{model_name}:{_weights_id(pretrained)}"
        log(f"CLIP {model_name} loaded with weights {pretrained}")
    model.eval()
    return ClipEncoder(
        model=model,
        preprocess=preprocess,
        model_id=model_id,
        random_weights=pretrained is None,
        embed_dim=_probe_embed_dim(model, preprocess),
    )


def project_config_files() -> list[Path]:
    """The architecture files this module registers with open_clip (`loretune-tiny-vit.json`, ...).

    They decide the model as much as this module's code does, so the features stage hashes them
    into its code version: an edited architecture must not reuse features built with the old one.
    Read from `MODEL_CONFIG_DIR` at call time, the folder `_register_project_configs` hands to
    open_clip, which registers every `*.json` in it.
    """
    files = sorted(MODEL_CONFIG_DIR.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no CLIP architecture files (*.json) in {MODEL_CONFIG_DIR}")
    return files


def _register_project_configs() -> None:
    """Make the project's own configs (loretune-tiny-vit) known to open_clip, once.

    Done on first use rather than at import so importing this module touches nothing global;
    open_clip appends to its search path on every call, so repeated calls are skipped.
    """
    if "loretune-tiny-vit" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def _build_random(model_name: str, seed: int) -> tuple[torch.nn.Module, Callable]:
    """Build with random weights, the same ones for the same seed.

    The seed is set inside a forked RNG so the caller's global torch RNG is left as it was.
    ``load_weights``/``pretrained_text`` off means nothing is fetched, even for hub-named models.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=None, load_weights=False, pretrained_text=False
        )
    return model, preprocess


def _weights_id(pretrained: str) -> str:
    """A tag names itself; a file is named by its content, since paths differ between machines."""
    path = Path(pretrained)
    if path.is_file():
        return f"file-sha256-{file_sha256(path)[:12]}"
    return pretrained


def _probe_embed_dim(model: torch.nn.Module, preprocess: Callable) -> int:
    """Ask the model for its output width: open_clip towers (ViT, ResNet, timm) store it differently."""
    with torch.no_grad():
        pixels = preprocess(Image.new("RGB", (32, 32))).unsqueeze(0)
        return int(model.encode_image(pixels).shape[-1])


def embed_images(
    encoder: ClipEncoder, paths: list[Path], batch_size: int = 16, log: Callable[[str], None] = print
) -> np.ndarray:
    """Embed images into an [N, embed_dim] float32 array, L2-normalised, one row per path in order.

    Normalised so that a dot product is the cosine similarity, which is how the features are used.
    """
    encoder.model.eval()
    rows: list[np.ndarray] = []
    total = len(paths)
    for start in range(0, total, batch_size):
        batch_paths = paths[start : start + batch_size]
        pixels = torch.stack([_load_pixels(encoder.preprocess, path) for path in batch_paths])
        with torch.no_grad():
            features = encoder.model.encode_image(pixels)
        rows.append(F.normalize(features.float(), dim=-1).numpy())
        log(f"clip: {start + len(batch_paths)}/{total} images embedded")
    if not rows:
        return np.zeros((0, encoder.embed_dim), dtype=np.float32)
    return np.concatenate(rows).astype(np.float32, copy=False)


def whole_batches(items: list[str], batch_size: int, count: int) -> list[list[str]]:
    """`items` in at most `count` chunks of whole `embed_images` batches, in order, so a chunk
    embedded anywhere meets the same batches, and gives the same numbers, as all of them here."""
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    per_chunk = -(-len(batches) // max(1, count)) if batches else 1
    return [[x for b in batches[i:i + per_chunk] for x in b] for i in range(0, len(batches), per_chunk)]


def _load_pixels(preprocess: Callable, path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return preprocess(image)


def write_features(sha256s: list[str], model_id: str, embeddings: np.ndarray, path: Path) -> None:
    """Write one row per image; the model id travels with every row so features never lose their key."""
    if embeddings.ndim != 2 or embeddings.shape[0] != len(sha256s):
        raise ValueError(
            f"embeddings of shape {embeddings.shape} do not match {len(sha256s)} sha256s"
        )
    if len(set(sha256s)) != len(sha256s):
        raise ValueError("sha256s contain duplicates; features are stored once per image")
    table = pa.table(
        {
            "sha256": sha256s,
            "model_id": [model_id] * len(sha256s),
            "embedding": _as_list_array(embeddings),
        },
        schema=FEATURES_SCHEMA,
    )
    pq.write_table(table, path)


def _as_list_array(embeddings: np.ndarray) -> pa.ListArray:
    """Build the list<float32> column straight from the array's buffer, not via Python floats."""
    rows, dim = embeddings.shape
    values = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, rows * dim + 1, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values)


def read_features(path: Path) -> dict[str, np.ndarray]:
    """Read features back as sha256 -> float32 vector.

    A file holds one model's features; refuse a mixed one, because a sha256 alone would then not say
    which model's vector you got.
    """
    table = pq.read_table(path)
    model_ids = set(table.column("model_id").to_pylist())
    if len(model_ids) > 1:
        raise ValueError(f"{path} mixes features from several CLIP models: {sorted(model_ids)}")
    sha256s = table.column("sha256").to_pylist()
    vectors = table.column("embedding").to_numpy()  # one float32 array per row
    return {
        sha256: np.asarray(vector, dtype=np.float32)
        for sha256, vector in zip(sha256s, vectors, strict=True)
    }
