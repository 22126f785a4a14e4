"""The dataset stage: chat examples and the decontaminated binary-choice evaluation set."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from loretune.config import DatasetConfig
from loretune.fingerprint import code_version
from loretune.ingest.documents import read_documents
from loretune.multimodal.images import read_index
from loretune.store import ArtifactRef
from loretune.tasks.stage import StageCache, publish_stage
from loretune.training import chat, dataset

DATASET = StageCache(stage="dataset", code=code_version(dataset, chat))


@task(name="dataset", cache_policy=DATASET, persist_result=True)
def build_dataset(store: str, domain: str, documents: ArtifactRef, images_ref: ArtifactRef, params: DatasetConfig) -> ArtifactRef:
    logger = get_run_logger()
    docs = read_documents(documents.local_path() / "documents.parquet")
    index = read_index(images_ref.local_path() / "images.parquet")
    pages = dataset.pages_from_documents(docs, {r.url: r.sha256 for r in index if r.sha256})

    def build(out: Path) -> dict:
        report = dataset.build_dataset(
            pages, out, domain=domain, system_prompt=params.system_prompt, max_answer_chars=params.max_answer_chars,
            val_fraction=params.val_fraction, seed=params.seed, near_duplicate_threshold=params.near_duplicate_threshold)
        dropped = report.dropped_exact + report.dropped_near_duplicate
        logger.info("dataset: %s train / %s validation examples, %s eval questions; contamination check "
                    "dropped %s eval questions (%s exact, %s near-duplicate)", report.train, report.validation,
                    report.eval_questions, dropped, report.dropped_exact, report.dropped_near_duplicate)
        return report.as_dict()

    return publish_stage(DATASET, build)
