"""The features stage: every fetched image embedded with CLIP, keyed by (image sha256, CLIP model).

Its version covers the architecture files the CLIP module registers with open_clip, since editing
`loretune-tiny-vit.json` changes the model as much as editing code.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from loretune.config import FeaturesConfig
from loretune.fingerprint import stage_code_version
from loretune.multimodal import clip, images
from loretune.store import ArtifactRef
from loretune.tasks.fanout import fan_out, width
from loretune.tasks.stage import StageCache, publish_stage


def features_code() -> str:
    """The modules this task runs and the CLIP architecture files they read."""
    return stage_code_version(__name__, files=clip.project_config_files())


FEATURES = StageCache(stage="features", code=features_code())


@task(name="features", cache_policy=FEATURES, persist_result=True)
def extract_features(store: str, domain: str, images_ref: ArtifactRef, params: FeaturesConfig) -> ArtifactRef:
    logger = get_run_logger()
    folder = images_ref.local_path()
    unique = {r.sha256: images.blob_path(folder, r.file) for r in images.read_index(folder / "images.parquet") if r.sha256}

    def build(out: Path) -> dict:
        encoder = clip.load_clip(params.clip_model, params.pretrained, seed=params.seed, log=logger.info)
        shas = sorted(unique)
        chunks = clip.whole_batches(shas, params.batch_size, width())
        if len(chunks) < 2:
            vectors = clip.embed_images(encoder, [unique[s] for s in shas], batch_size=params.batch_size,
                                        log=logger.info)
        else:  # on Dask: whole CLIP batches per worker, so every image is embedded in the same batch as here
            logger.info("features: %s images in %s chunks across the Dask cluster", len(shas), len(chunks))
            vectors = np.concatenate(fan_out(partial(_embed, images_ref=images_ref, params=params),
                                             [[unique[s].relative_to(folder).as_posix() for s in c] for c in chunks]))
        clip.write_features(shas, encoder.model_id, vectors, out / "features.parquet")
        return {"images": len(shas), "embed_dim": encoder.embed_dim, "model_id": encoder.model_id,
                "random_weights": encoder.random_weights}

    return publish_stage(FEATURES, build)


def _embed(files: list[str], images_ref: ArtifactRef, params: FeaturesConfig) -> np.ndarray:
    """One chunk of images embedded wherever Dask runs it, with the same seeded (or loaded) CLIP."""
    log = logging.getLogger(__name__).info  # a Dask task has no Prefect run logger
    encoder = clip.load_clip(params.clip_model, params.pretrained, seed=params.seed, log=log)
    folder = images_ref.local_path()
    return clip.embed_images(encoder, [folder / f for f in files], batch_size=params.batch_size, log=log)
