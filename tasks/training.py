"""The checkpoints stage: LoRA fine-tuning of the model stage's base on the dataset.

Training runs in a scratch folder kept under the state directory, keyed by the stage version, so
a crashed or cancelled run resumes from its last checkpoint next time instead of starting over;
only a finished run is published to the store.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from loretune.config import TrainingConfig, state_dir
from loretune.dataset.layout import BUILD_REPORT, system_prompt
from loretune.fingerprint import stage_code_version
from loretune.model.answer_cache import AnswerCache
from loretune.model.chat_format import ChatFormat
from loretune.model.loading import training_precision
from loretune.multimodal.clip import read_features
from loretune.store import ArtifactRef
from loretune.tasks.model import base_model_location
from loretune.tasks.stage import StageCache, announce_png, publish_stage, stage_inputs
from loretune.training import launch, retention, sft, worker
from loretune.training import scratch as scratch_dirs
from loretune.training.recipe import Recipe, budget_steps

# The unsloth helper (training/unsloth_lora.py) is in this version too: sft imports it lazily, and
# the import graph reads imports from the source, so nothing here has to import unsloth.
CHECKPOINTS = StageCache(stage="checkpoints", code=stage_code_version(__name__))
# Flow runs that train take turns on a GPU: the stack gives this tag a concurrency limit of 1.
GPU_TAG = "gpu"
LOSS_PLOT = "loss.png"
RETENTION_FILE = "retention.jsonl"  # the base's answers the retention share trained on


def clip_spec(features: ArtifactRef) -> dict:
    """The CLIP the features stage embedded with (its parameters), for the projector's spec."""
    params = features.manifest()["parameters"].get("params", {})
    return {"model": params.get("clip_model"), "pretrained": params.get("pretrained"), "seed": params.get("seed", 0)}


def resolve_recipe(params: TrainingConfig, dataset_dir: Path, instruct: bool = True) -> tuple[Recipe, str, int]:
    """The recipe with its step budget resolved from epochs or exposures per fact (`budget_steps`),
    the budget in words, and how many retention examples join the split (`retention` x the lore's
    training examples), all read off the dataset's build report. A base that is not
    instruction-tuned gets no retention share: what it says to a question is a continuation of
    the page, not a reply, and training on it would teach the babble it should unlearn."""
    values = params.model_dump()
    epochs, exposures, checkpoints = values.pop("epochs"), values.pop("exposures"), values.pop("checkpoints")
    values.pop("retention")
    report = json.loads((dataset_dir / BUILD_REPORT).read_text())
    retained = round(params.retention * report["train"]) if instruct else 0
    processes = params.num_processes if params.launcher == launch.ACCELERATE else 1  # each step sees all their batches
    steps, budget = budget_steps(
        max_steps=params.max_steps, epochs=epochs, exposures=exposures, train_examples=report["train"] + retained,
        statements_per_epoch=report.get("exposures", {}).get("field", {}).get("mean"),
        effective_batch=params.batch_size * params.gradient_accumulation_steps * processes)
    if epochs is not None or exposures is not None:
        values.update(max_steps=steps, save_steps=max(1, math.ceil(steps / checkpoints)))
    return Recipe.from_dict(values), budget, retained


@task(name="train", cache_policy=CHECKPOINTS, persist_result=True, tags=[GPU_TAG])
def train(store: str, domain: str, dataset_ref: ArtifactRef, features: ArtifactRef, base: ArtifactRef,
          params: TrainingConfig, image_tokens: int, runtime: dict, load_in_4bit: bool = False) -> ArtifactRef:
    """`runtime` (backend, device, dtype, library versions) is part of the version: a new torch or
    a GPU machine trains anew rather than reusing checkpoints made under other maths. Training
    itself runs where `runtime["backend"]` says: here for hf, in a process of its own for unsloth;
    with `params.launcher: accelerate`, in `params.num_processes` under `accelerate launch` (hf only)."""
    logger = get_run_logger()
    launch.check_launcher(runtime["backend"], params.launcher, load_in_4bit)  # before any work
    scratch = state_dir() / "work" / f"{scratch_dirs.PREFIX}{CHECKPOINTS.version(stage_inputs())}"
    vectors = read_features(features.local_path() / "features.parquet")

    instruct = base.manifest()["details"].get("source", {}).get("instruct", True)
    recipe, budget, retained = resolve_recipe(params, dataset_ref.local_path(), instruct)
    logger.info("train: budget %s", budget)
    if params.retention and not instruct:
        logger.warning("train: the base is pretrained, not instruction-tuned: its answers to general questions "
                       "are continuations, not replies, so training.retention (%s) is not applied", params.retention)

    def build(out: Path) -> dict:
        scratch_dirs.claim(scratch)
        for name in scratch_dirs.clean_others(scratch):
            logger.info("train: removed %s, scratch of another version whose run is gone", name)
        bar = create_progress_artifact(progress=0.0, key=f"{domain}-training",
                                       description=f"training step of {recipe.max_steps}")

        def progress(step: int, max_steps: int) -> None:
            update_progress_artifact(bar, progress=100.0 * step / max(max_steps, 1),
                                     description=f"training step {step} of {max_steps}")

        extra = keep_talking(retained, out)
        checkpoints = worker.train_checkpoints(
            backend=runtime["backend"], dataset_dir=dataset_ref.local_path(), features=vectors,
            clip_dim=features.manifest()["counts"]["embed_dim"], base_model=base_model_location(base),
            output_dir=scratch, cfg=recipe, image_tokens=image_tokens, log=logger.info, progress=progress,
            clip=clip_spec(features), load_in_4bit=load_in_4bit, extra_train=extra)
        published = sft.publish_checkpoints(scratch, out)
        sft.plot_losses(published[-1].path / "trainer_state.json", out / LOSS_PLOT, title=f"{domain}: loss per step")
        labels = json.loads((out / sft.LABELS_FILE).read_text())
        run = json.loads((out / sft.TRAINING_RUN_FILE).read_text())
        for backoff in run["oom_backoffs"]:
            logger.warning("train: out of GPU memory at step %s; went on with batch %s x accumulation %s",
                           backoff["at_step"], backoff["batch_size"], backoff["gradient_accumulation_steps"])
        return {"checkpoints": len(published), "steps": checkpoints[-1].step, "budget": budget,
                "retention_examples": len(extra), "backend": run["backend"],
                "load_in_4bit": run["load_in_4bit"], "images": run["images"],
                "oom_backoffs": len(run["oom_backoffs"]), "processes": run.get("processes", 1), "training_run": run,
                "examples_without_trainable_tokens": labels["no_trainable_tokens"],
                "examples_with_truncated_answers": labels["truncated_answers"], "label_check": labels}

    def keep_talking(count: int, out: Path) -> list:
        """The retention share: the base's own answers to general questions (cached), kept in the artifact."""
        if not count:
            return []
        system = system_prompt(dataset_ref.local_path())
        answers = retention.base_answers(
            base_model=base_model_location(base), model_key=json.dumps({"base": base.version, **runtime}, sort_keys=True),
            system=system, cache=AnswerCache(state_dir() / "generation-cache"),
            fmt=ChatFormat.load(Path(base_model_location(base))), attn_implementation=params.attn_implementation,
            precision=training_precision(runtime["device"], params.precision), log=logger.info)
        (out / RETENTION_FILE).write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers))
        examples = retention.retention_examples(answers, system, count)
        if not examples:
            logger.warning("train: the base said no whole sentence to any of the %d general questions (%s); "
                           "training goes on without the retention share", len(answers), RETENTION_FILE)
        return examples

    ref = publish_stage(CHECKPOINTS, build)
    shutil.rmtree(scratch, ignore_errors=True)
    announce_png(f"{domain}-loss-curve", ref.local_path() / LOSS_PLOT, "loss per step",
                 f"training and validation loss (checkpoints {ref.version})")
    return ref
