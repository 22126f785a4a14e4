"""The evaluation stage: every checkpoint and step 0 on every set; table, plot and the promotion gate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from loretune.config import EvaluationConfig, state_dir
from loretune.dataset import evalsets
from loretune.dataset.evalsets import UserSet
from loretune.dataset.layout import system_prompt
from loretune.evaluation import before_after, binary_choice, heatmap, open_questions, promotion
from loretune.evaluation.table import TABLE_FILE
from loretune.fingerprint import stage_code_version
from loretune.model.checkpoints import list_checkpoints
from loretune.model.loading import training_precision
from loretune.multimodal.clip import read_features
from loretune.store import ArtifactRef
from loretune.tasks.model import base_model_location
from loretune.tasks.stage import StageCache, announce_png, publish_stage

EVALUATION = StageCache(stage="evaluation", code=stage_code_version(__name__))
BASELINES = "baselines.json"
PER_ITEM = "per_item.jsonl"
PLOT = "accuracy.png"
BEFORE_AFTER = "before_after.json"
REPORT_METRICS = ("answer_match", "rougeL", "bleu", "chrf", "bertscore_f1", "answer_tokens", "stopped")
HEATMAP_METRICS = ("answer_match", "rougeL", "bleu", "chrf", "bertscore_f1", "answer_tokens")


@task(name="evaluate", cache_policy=EVALUATION, persist_result=True)
def evaluate_checkpoints(store: str, domain: str, checkpoints: ArtifactRef, dataset_ref: ArtifactRef,
                         features: ArtifactRef, base: ArtifactRef, params: EvaluationConfig, max_length: int,
                         attn_implementation: str, user_sets: list[UserSet], runtime: dict,
                         open_user_sets: list[UserSet] | None = None) -> ArtifactRef:
    """`user_sets` and `open_user_sets` carry each user file's sha256, so editing one re-runs this
    stage and no other; `runtime` (backend, device, dtype, library versions) is part of the version too."""
    logger = get_run_logger()
    dataset_dir = dataset_ref.local_path()
    found = list_checkpoints(checkpoints.local_path())

    def build(out: Path) -> dict:
        sets, baselines = evalsets.load_eval_sets(dataset_dir, user_sets, params.max_items, params.seed)
        result = binary_choice.evaluate_checkpoints(
            base_model=base_model_location(base), checkpoints=found, sets=sets, system=system_prompt(dataset_dir),
            features=read_features(features.local_path() / "features.parquet"),
            batch_size=params.batch_size, max_length=max_length, attn_implementation=attn_implementation,
            precision=precision, log=logger.info)
        pd.DataFrame(result.table, columns=binary_choice.TABLE_COLUMNS).to_csv(out / TABLE_FILE, index=False)
        (out / BASELINES).write_text(json.dumps(baselines, indent=2, sort_keys=True))
        (out / PER_ITEM).write_text("".join(json.dumps(r) + "\n" for r in result.per_item))
        binary_choice.plot(result.table, baselines, out / PLOT, title=f"{domain}: accuracy per checkpoint, per set")
        spoken = say(out)
        decision = promotion.promote(result.table, baselines, params.promote.set, params.promote.metric,
                                     open_table=spoken, checks=[c.model_dump() for c in params.promote.open],
                                     decoding=params.promote.decoding)
        decision["decoding"] = recommendations(spoken)
        (logger.info if decision["promoted"] else logger.warning)("evaluate: %s", decision["reason"])
        compare(out, decision)
        return {"checkpoints": len({r["step"] for r in result.table}) - 1,
                **{f"{name}_items": len(items) for name, items in sets.items()},
                "promoted": decision["promoted"], "promotion": decision,
                "decoding_points": [p.model_dump() for p in params.decoding]}

    def say(out: Path) -> list[dict]:
        """Every checkpoint and step 0 answer the open sets over the decoding grid (cached per cell)."""
        open_sets = open_questions.sets_to_ask(dataset_dir, open_user_sets or [], params.max_open_items, params.seed,
                                               params.probe_questions)
        gate_point = [p for p in points if p.name == params.promote.decoding] or points[:1]
        spoken = open_questions.evaluate_open(
            base_model=base_model_location(base), checkpoints=found, sets=open_sets,
            grid={name: gate_point if name == open_questions.PROBES else points for name in open_sets},
            seeds=params.seeds,
            system=system_prompt(dataset_dir), batch_size=params.generation_batch_size,
            cache=open_questions.AnswerCache(state_dir() / "generation-cache"),
            model_keys={0: json.dumps({"base": base.version, **maths}, sort_keys=True),
                        **{c.step: json.dumps({"checkpoints": checkpoints.version, "name": c.path.name, **maths},
                                              sort_keys=True) for c in found}},
            attn_implementation=attn_implementation, precision=precision, log=logger.info)
        table = spoken.table()
        pd.DataFrame(table, columns=open_questions.TABLE_COLUMNS).to_csv(out / open_questions.TABLE_FILE, index=False)
        (out / open_questions.ANSWERS_FILE).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                               for r in spoken.answers))
        pd.DataFrame(spoken.cells).to_csv(out / open_questions.CELLS_FILE, index=False)
        for metric in HEATMAP_METRICS:
            heatmap.heatmap(table, metric, out / f"generation_{metric}.png", f"{domain}: open questions")
        generated = [c for c in spoken.cells if not c["cached"]]
        if generated:
            logger.info("evaluate: %d open-question cells generated, %.1f s per cell on average (%d cached)",
                        len(generated), sum(c["seconds"] for c in generated) / len(generated),
                        len(spoken.cells) - len(generated))
        return table

    points = [open_questions.Point.from_dict(p.model_dump()) for p in params.decoding]
    precision = training_precision(runtime.get("device", "cpu"), params.precision)
    maths = {**runtime, "evaluation_precision": precision}  # what an answer in the cache was computed with
    logger.info("evaluate: scoring and generating in %s%s", precision,
                " autocast" if precision == "bf16" and runtime.get("device") == "cpu" else "")

    def recommendations(table: list[dict]) -> dict[str, dict | None]:
        """Per checkpoint, the decoding point to serve it with (on the first open check's set and metric)."""
        if not params.promote.open:
            return {}
        check = params.promote.open[0]
        grid = [p.model_dump() for p in params.decoding]
        return {c.path.name: promotion.recommend_decoding(table, c.step, check.set, check.metric, grid) for c in found}

    def compare(out: Path, decision: dict) -> None:
        """Before / after: the probe questions' answers of step 0 and of the promoted (else the last)
        checkpoint, read from the open-question answers (the same generation as every other cell)."""
        chosen = next((c for c in found if c.path.name == decision["promoted"]), found[-1])
        answers = [json.loads(line) for line in (out / open_questions.ANSWERS_FILE).read_text().splitlines()]
        pairs = before_after.from_answers(answers, open_questions.PROBES, chosen.step)
        for answer in pairs:
            logger.info("before/after: %s\n  base:       %s\n  %s: %s", answer.question, answer.base,
                        chosen.path.name, answer.tuned)
        (out / BEFORE_AFTER).write_text(json.dumps(
            {"checkpoint": chosen.path.name, "promoted": bool(decision["promoted"]),
             "decoding": params.promote.decoding, "answers": [dataclasses.asdict(a) for a in pairs]}, indent=2))

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
    served = (decision.get("decoding") or {}).get(decision["promoted"] or "")
    create_markdown_artifact(key=f"{domain}-promoted",
                             markdown=f"### {domain}: promotion\n\n{headline}\n\n{decision['reason']}\n\n"
                                      f"gate: earliest checkpoint within 1 SE of the best on `{decision['set']}` by "
                                      f"`{decision['metric']}`; must beat step 0 and the no-knowledge baselines "
                                      f"beyond the 95% interval, and must not answer the open questions worse than "
                                      f"step 0 beyond the paired 95% interval (evaluation `{ref.version}`)"
                                      + (f"\n\nrecommended decoding: `{served['name']}` ({served['why']})"
                                         if served else ""),
                             description=f"promoted: {decision['promoted'] or 'none'}")
    generation = read_generation(ref)
    if generation:
        create_table_artifact(key=f"{domain}-generation", table=generation_rows(generation),
                              description=f"open questions: what each checkpoint says, per decoding point, mean over "
                                          f"seeds ± standard error (evaluation {ref.version})")
        for metric in HEATMAP_METRICS:
            announce_png(f"{domain}-generation-{metric.lower().replace('_', '-')}",
                         ref.local_path() / f"generation_{metric}.png", f"open questions: {metric}",
                         f"{metric} per checkpoint and decoding point (evaluation {ref.version})")
    compared = read_before_after(ref)
    if compared:
        create_markdown_artifact(key=f"{domain}-before-after", description="answers: base vs fine-tuned",
                                 markdown=before_after.markdown(
                                     domain, compared["checkpoint"],
                                     [before_after.Answer(**a) for a in compared["answers"]],
                                     compared["promoted"], compared.get("decoding", "greedy")))


def read_generation(ref: ArtifactRef) -> list[dict]:
    """The open-question table (`generation.csv`), or nothing for an evaluation made before it existed."""
    path = ref.local_path() / open_questions.TABLE_FILE
    if not path.exists():
        return []
    return pd.read_csv(path).astype(object).where(lambda d: d.notna(), None).to_dict("records")


def generation_rows(table: list[dict], metrics: tuple[str, ...] = REPORT_METRICS) -> list[dict]:
    """The aggregate rows of the headline metrics, one row per (set, checkpoint, decoding point)."""
    rows: dict[tuple, dict] = {}
    for r in table:
        if r["seed"] is None and r["metric"] in metrics:
            row = rows.setdefault((r["set"], r["step"], r["decoding"]),
                                  {"set": r["set"], "step": r["step"], "checkpoint": r["checkpoint"],
                                   "decoding": r["decoding"], "n": r["n"], "seeds": r["seeds"]})
            row[r["metric"]] = round(r["value"], 4)
            row[f"{r['metric']}_stderr"] = round(r["stderr"], 4) if r["stderr"] is not None else None
            if r["seeds"] and r["seeds"] > 1:
                row[f"{r['metric']}_seed_std"] = round(r["seed_std"], 4)
    return list(rows.values())


def read_before_after(ref: ArtifactRef) -> dict[str, Any] | None:
    path = ref.local_path() / BEFORE_AFTER
    return json.loads(path.read_text()) if path.exists() else None
