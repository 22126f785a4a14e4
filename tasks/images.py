"""The images and features stages: fetch and validate every image, then embed it with CLIP."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from loretune.config import FeaturesConfig, HttpConfig, ImagesConfig
from loretune.fingerprint import code_version
from loretune.ingest import http
from loretune.ingest.documents import read_documents
from loretune.multimodal import clip, images
from loretune.store import ArtifactRef
from loretune.tasks.stage import StageCache, publish_stage


def features_code() -> str:
    """The features stage's code: the CLIP module and the architecture files it registers with
    open_clip, since editing `loretune-tiny-vit.json` changes the model as much as editing code."""
    return code_version(clip, files=clip.project_config_files())


IMAGES = StageCache(stage="images", code=code_version(images, http))
FEATURES = StageCache(stage="features", code=features_code())


@task(name="images", cache_policy=IMAGES, persist_result=True)
def fetch_images(store: str, domain: str, documents: ArtifactRef, params: ImagesConfig, http_cfg: HttpConfig) -> ArtifactRef:
    logger = get_run_logger()
    docs = read_documents(documents.local_path() / "documents.parquet")
    urls = list(dict.fromkeys(url for doc in docs for url in doc.image_urls))
    if params.max_images is not None:
        urls = urls[: params.max_images]

    def build(out: Path) -> dict:
        session = http.PoliteSession(**http_cfg.model_dump())
        records = images.fetch_images(urls, out, session.get_bytes, max_bytes=params.max_bytes,
                                      max_pixels=params.max_pixels, log=logger.info)
        images.write_index(records, out / "images.parquet")
        failed = [r for r in records if r.error]
        for record in failed:
            logger.warning(record.error)
        return {"urls": len(records), "images": len({r.sha256 for r in records if r.sha256}),
                "failed": len(failed), "requests": session.requests_made}

    return publish_stage(IMAGES, build)


@task(name="features", cache_policy=FEATURES, persist_result=True)
def extract_features(store: str, domain: str, images_ref: ArtifactRef, params: FeaturesConfig) -> ArtifactRef:
    logger = get_run_logger()
    folder = images_ref.local_path()
    unique = {r.sha256: folder / r.file for r in images.read_index(folder / "images.parquet") if r.sha256}

    def build(out: Path) -> dict:
        encoder = clip.load_clip(params.clip_model, params.pretrained, seed=params.seed, log=logger.info)
        shas = sorted(unique)
        vectors = clip.embed_images(encoder, [unique[s] for s in shas], batch_size=params.batch_size, log=logger.info)
        clip.write_features(shas, encoder.model_id, vectors, out / "features.parquet")
        return {"images": len(shas), "embed_dim": encoder.embed_dim, "model_id": encoder.model_id,
                "random_weights": encoder.random_weights}

    return publish_stage(FEATURES, build)
