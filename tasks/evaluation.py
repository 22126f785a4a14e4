"""The evaluation stage: every checkpoint and step 0 on every set; table, plot and the promotion gate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from loretune.config import EvaluationConfig
from loretune.dataset import evalsets
from loretune.dataset.evalsets import UserSet
from loretune.dataset.layout import system_prompt
from loretune.evaluation import before_after, binary_choice, promotion
from loretune.evaluation.table import TABLE_FILE
from loretune.fingerprint import stage_code_version
from loretune.model.checkpoints import list_checkpoints
from loretune.multimodal.clip import read_features
from loretune.store import ArtifactRef
from loretune.tasks.model import base_model_location
from loretune.tasks.stage import StageCache, announce_png, publish_stage

EVALUATION = StageCache(stage="evaluation", code=stage_code_version(__name__))
BASELINES = "baselines.json"
PER_ITEM = "per_item.jsonl"
PLOT = "accuracy.png"
BEFORE_AFTER = "before_after.json"


@task(name="evaluate", cache_policy=EVALUATION, persist_result=True)
def evaluate_checkpoints(store: str, domain: str, checkpoints: ArtifactRef, dataset_ref: ArtifactRef,
                         features: ArtifactRef, base: ArtifactRef, params: EvaluationConfig, max_length: int,
                         attn_implementation: str, user_sets: list[UserSet], runtime: dict) -> ArtifactRef:
    """`user_sets` carries each user file's sha256, so editing one re-runs this stage and no other;
    `runtime` (backend, device, dtype, library versions) is part of the version too."""
    logger = get_run_logger()

    def build(out: Path) -> dict:
        sets, baselines = evalsets.load_eval_sets(dataset_ref.local_path(), user_sets, params.max_items, params.seed)
        result = binary_choice.evaluate_checkpoints(
            base_model=base_model_location(base), checkpoints=list_checkpoints(checkpoints.local_path()),
            sets=sets, system=system_prompt(dataset_ref.local_path()),
            features=read_features(features.local_path() / "features.parquet"),
            batch_size=params.batch_size, max_length=max_length, attn_implementation=attn_implementation,
            log=logger.info)
        pd.DataFrame(result.table, columns=binary_choice.TABLE_COLUMNS).to_csv(out / TABLE_FILE, index=False)
        (out / BASELINES).write_text(json.dumps(baselines, indent=2, sort_keys=True))
        (out / PER_ITEM).write_text("".join(json.dumps(r) + "\n" for r in result.per_item))
        binary_choice.plot(result.table, baselines, out / PLOT, title=f"{domain}: accuracy per checkpoint, per set")
        decision = promotion.promote(result.table, baselines, params.promote.set, params.promote.metric)
        (logger.info if decision["promoted"] else logger.warning)("evaluate: %s", decision["reason"])
        compare(out, decision, sets)
        return {"checkpoints": len({r["step"] for r in result.table}) - 1,
                **{f"{name}_items": len(items) for name, items in sets.items()},
                "promoted": decision["promoted"], "promotion": decision}

    def compare(out: Path, decision: dict, sets: dict) -> None:
        """Before / after: the base's and the promoted (else the last) checkpoint's greedy answers."""
        found = list_checkpoints(checkpoints.local_path())
        chosen = next((c for c in found if c.path.name == decision["promoted"]), found[-1])
        questions = params.probe_questions or [item["question"] for item in sets.get("facts", [])[:3]]
        answers = before_after.greedy_answers(base_model_location(base), chosen.path, questions,
                                              system_prompt(dataset_ref.local_path()),
                                              params.probe_max_new_tokens, attn_implementation)
        for answer in answers:
            logger.info("before/after: %s\n  base:       %s\n  %s: %s", answer.question, answer.base,
                        chosen.path.name, answer.tuned)
        (out / BEFORE_AFTER).write_text(json.dumps(
            {"checkpoint": chosen.path.name, "promoted": bool(decision["promoted"]),
             "answers": [dataclasses.asdict(a) for a in answers]}, indent=2))

    ref = publish_stage(EVALUATION, build, announce_manifest=False)
    publish_report(domain, ref)
    return ref


def read_table(ref: ArtifactRef) -> list[dict]:
    return pd.read_csv(ref.local_path() / TABLE_FILE).astype(object).where(lambda d: d.notna(), None).to_dict("records")


def read_baselines(ref: ArtifactRef) -> dict[str, dict[str, dict[str, float]]]:
    return json.loads((ref.local_path() / BASELINES).read_text())


def read_promotion(ref: ArtifactRef) -> dict[str, Any]:
    return ref.manifest()["details"]["promotion"]


def report_rows(table: list[dict], baselines: dict[str, dict[str, dict[str, float]]]) -> list[dict]:
    """Per set: its no-knowledge baselines, then every checkpoint; what the table artifact shows."""
    rows = []
    for name in dict.fromkeys(r["set"] for r in table):
        for baseline, value in baselines.get(name, {}).items():
            rows.append({"set": name, "step": None, "checkpoint": f"baseline: {baseline}",
                         "acc": value["value"], "acc_stderr": value["stderr"]})
        rows += [r for r in table if r["set"] == name]
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in rows]


def publish_report(domain: str, ref: ArtifactRef) -> None:
    """The table (baselines beside it), its plot and the promotion, under stable keys."""
    create_table_artifact(key=f"{domain}-evaluation", table=report_rows(read_table(ref), read_baselines(ref)),
                          description=f"accuracy per checkpoint and set, ± standard error (evaluation {ref.version})")
    announce_png(f"{domain}-evaluation-plot", ref.local_path() / PLOT, "accuracy per checkpoint",
                 f"accuracy per checkpoint and set (evaluation {ref.version})")
    decision = read_promotion(ref)
    headline = f"**promoted: `{decision['promoted']}`**" if decision["promoted"] else "**no checkpoint beats the base**"
    create_markdown_artifact(key=f"{domain}-promoted",
                             markdown=f"### {domain}: promotion\n\n{headline}\n\n{decision['reason']}\n\n"
                                      f"gate: earliest checkpoint within 1 SE of the best on `{decision['set']}` by "
                                      f"`{decision['metric']}`; must beat step 0 and the no-knowledge baselines "
                                      f"beyond the 95% interval (evaluation `{ref.version}`)",
                             description=f"promoted: {decision['promoted'] or 'none'}")
    compared = read_before_after(ref)
    if compared:
        create_markdown_artifact(key=f"{domain}-before-after", description="greedy answers: base vs fine-tuned",
                                 markdown=before_after.markdown(domain, compared["checkpoint"],
                                                                [before_after.Answer(**a) for a in compared["answers"]],
                                                                compared["promoted"]))


def read_before_after(ref: ArtifactRef) -> dict[str, Any] | None:
    path = ref.local_path() / BEFORE_AFTER
    return json.loads(path.read_text()) if path.exists() else None
