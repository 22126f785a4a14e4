"""The evaluation stage: every checkpoint and step 0 on the binary-choice set; table and plot."""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd
from datasets import Dataset
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from loretune.config import EvaluationConfig
from loretune.fingerprint import code_version
from loretune.multimodal import fusion
from loretune.multimodal.clip import read_features
from loretune.store import ArtifactRef
from loretune.tasks.stage import StageCache, publish_stage
from loretune.tasks.training import base_model_location
from loretune.training import chat, evaluate
from loretune.training.sft import list_checkpoints

EVALUATION = StageCache(stage="evaluation", code=code_version(evaluate, chat, fusion))
TABLE = "evaluation.csv"
PLOT = "accuracy.png"


@task(name="evaluate", cache_policy=EVALUATION, persist_result=True)
def evaluate_checkpoints(store: str, domain: str, checkpoints: ArtifactRef, dataset_ref: ArtifactRef,
                         features: ArtifactRef, base: ArtifactRef, params: EvaluationConfig, max_length: int) -> ArtifactRef:
    logger = get_run_logger()

    def build(out: Path) -> dict:
        table = evaluate.evaluate_checkpoints(
            base_model=base_model_location(base), checkpoints=list_checkpoints(checkpoints.local_path()),
            questions=Dataset.load_from_disk(str(dataset_ref.local_path() / "eval_binary")),
            features=read_features(features.local_path() / "features.parquet"),
            batch_size=params.batch_size, max_length=max_length, log=logger.info)
        pd.DataFrame(table, columns=evaluate.TABLE_COLUMNS).to_csv(out / TABLE, index=False)
        evaluate.plot(table, out / PLOT, title=f"{domain}: binary-choice accuracy per checkpoint")
        best = max(table, key=lambda r: r["accuracy"])
        return {"checkpoints": len(table) - 1, "questions": table[0]["questions"],
                "step0_accuracy": table[0]["accuracy"], "best_accuracy": best["accuracy"], "best_step": best["step"]}

    ref = publish_stage(EVALUATION, build, announce_manifest=False)
    publish_report(domain, ref)
    return ref


def read_table(ref: ArtifactRef) -> list[dict]:
    return pd.read_csv(ref.local_path() / TABLE).astype(object).where(lambda d: d.notna(), None).to_dict("records")


def publish_report(domain: str, ref: ArtifactRef) -> None:
    """The per-checkpoint table and its plot, under stable keys (new versions only)."""
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in read_table(ref)]
    create_table_artifact(key=f"{domain}-evaluation", table=rows,
                          description=f"binary-choice accuracy per checkpoint (evaluation {ref.version})")
    png = base64.b64encode((ref.local_path() / PLOT).read_bytes()).decode()
    create_markdown_artifact(key=f"{domain}-evaluation-plot",
                             markdown=f"![accuracy per checkpoint](data:image/png;base64,{png})",
                             description=f"accuracy per checkpoint (evaluation {ref.version})")
