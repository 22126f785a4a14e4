"""The dataset stage: chat examples and the evaluation sets, with their no-knowledge baselines."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from loretune.config import DatasetConfig
from loretune.dataset import assemble, evalsets
from loretune.dataset.fact_renderings import Teaching
from loretune.fingerprint import stage_code_version
from loretune.ingest.documents import read_documents
from loretune.multimodal.images import read_index
from loretune.store import ArtifactRef, ArtifactStore
from loretune.tasks.stage import StageCache, announce, publish_stage

DATASET = StageCache(stage="dataset", code=stage_code_version(__name__))


@task(name="dataset", cache_policy=DATASET, persist_result=True)
def build_dataset(store: str, domain: str, documents: ArtifactRef, images_ref: ArtifactRef, params: DatasetConfig,
                  mix_sources: list[dict] | None = None) -> ArtifactRef:
    """`mix_sources` (`flows.stages.mix_sources`) carries each mixed-in file's sha256, so an
    edited file is a new dataset version."""
    logger = get_run_logger()
    docs = read_documents(documents.local_path() / "documents.parquet")
    index = read_index(images_ref.local_path() / "images.parquet")
    pages = assemble.pages_from_documents(docs, {r.url: r.sha256 for r in index if r.sha256})

    def build(out: Path) -> dict:
        report = assemble.build_dataset(
            pages, out, domain=domain, system_prompt=params.system_prompt, max_answer_chars=params.max_answer_chars,
            val_fraction=params.val_fraction, seed=params.seed, near_duplicate_threshold=params.near_duplicate_threshold,
            control=params.control, mix=mix_sources or [], fraction=params.fraction,
            teaching=Teaching(**params.teaching.model_dump()))
        dropped = report.dropped_exact + report.dropped_near_duplicate
        logger.info("dataset: %s train / %s validation examples; eval sets %s; contamination check dropped %s "
                    "eval questions (%s exact, %s near-duplicate)", report.train, report.validation,
                    ", ".join(f"{k} {v['items']}" for k, v in report.eval_sets.items()), dropped,
                    report.dropped_exact, report.dropped_near_duplicate)
        logger.info("dataset: open-question sets %s", ", ".join(
            f"{k} {v['items']} ({v['not_taught']} dropped: answer not in the training text)"
            for k, v in report.open_sets.items()))
        logger.info("dataset: statements per fact in the training split (per epoch): %s", "; ".join(
            f"{kind} {v['facts']} facts, {v['min']}-{v['max']} (mean {v['mean']})"
            for kind, v in report.exposures.items() if "mean" in v))
        logger.info("dataset: examples by source / builder: %s; the card is README.md in the artifact",
                    ", ".join(f"{k} {v}" for k, v in report.examples.items()))
        if report.skipped:
            logger.info("dataset: documents a builder made nothing from: %s", "; ".join(
                f"{builder}: " + ", ".join(f"{reason} {n}" for reason, n in reasons.items())
                for builder, reasons in report.skipped.items()))
        if report.near_duplicate_examples:
            logger.info("dataset: dropped near-duplicate training examples (dropped ~ kept source): %s",
                        ", ".join(f"{k} {v}" for k, v in report.near_duplicate_examples.items()))
        if report.mixed:
            logger.info("dataset: mixed in %s", ", ".join(f"{n} {name}" for name, n in report.mixed.items()))
        if params.control != "none":
            logger.warning("dataset: control %r: training does not teach the true facts", params.control)
        return report.as_dict()

    ref = publish_stage(DATASET, build, announce_manifest=False)
    manifest = ArtifactStore(store).manifest(ref.stage, ref.version)
    announce(domain, manifest, extra_markdown=baselines_markdown(manifest["details"]["eval_sets"]))
    return ref


def baselines_markdown(eval_sets: dict) -> str:
    rows = [f"| {name} | {info['items']} | " + " | ".join(
        f"{info['baselines'][b]['value']:.3f} ± {info['baselines'][b]['stderr']:.3f}" for b in evalsets.BASELINES) + " |"
        for name, info in eval_sets.items()]
    return ("\n#### evaluation sets and what no knowledge scores on them\n\n| set | items | "
            + " | ".join(evalsets.BASELINES) + " |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
