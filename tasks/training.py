"""The base-model and checkpoints stages.

Training runs in a scratch folder kept under the state directory, keyed by the stage version, so
a crashed or cancelled run resumes from its last checkpoint next time instead of starting over;
only a finished run is published to the store.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from loretune.config import ModelConfig, TrainingConfig, state_dir
from loretune.fingerprint import code_version
from loretune.multimodal import fusion
from loretune.multimodal.clip import read_features
from loretune.store import ArtifactRef
from loretune.tasks.stage import StageCache, announce_png, publish_stage, stage_inputs
from loretune.training import backends, base_models, chat, dataset, sft, tiny_model, worker
from loretune.training import scratch as scratch_dirs

BASE_MODEL = StageCache(stage="model", code=code_version(tiny_model, base_models, chat))
# unsloth_lora.py by file: importing it imports unsloth, which only the training worker may do.
UNSLOTH_LORA = Path(backends.__file__).with_name("unsloth_lora.py")
CHECKPOINTS = StageCache(stage="checkpoints", code=code_version(sft, chat, backends, fusion, worker,
                                                                files=[UNSLOTH_LORA]))
# Flow runs that train take turns on a GPU: the stack gives this tag a concurrency limit of 1.
GPU_TAG = "gpu"
LOSS_PLOT = "loss.png"


def base_model_location(base: ArtifactRef) -> str:
    """The model stage's folder: every base model is materialised there, tiny or not."""
    return str(base.local_path())


@task(name="model", cache_policy=BASE_MODEL, persist_result=True)
def build_base_model(store: str, domain: str, dataset_ref: ArtifactRef | None, params: ModelConfig,
                     source: dict) -> ArtifactRef:
    """`source` (from `base_models.describe_source`) pins the exact model; `dataset_ref` is set only
    for the tiny model, whose tokenizer is trained on the corpus, so a new dataset does not rebuild
    a pretrained base."""
    logger = get_run_logger()

    def build(out: Path) -> dict:
        if source["kind"] == base_models.TINY:
            texts = dataset.corpus_texts(dataset_ref.local_path())
            sizes = tiny_model.build_and_save(texts, out, **params.tiny.model_dump())
            logger.info("built the tiny model: %s parameters, vocabulary %s", f"{sizes['parameters']:,}", sizes["vocab_size"])
            counts = {**sizes, "base": "tiny"}
        else:
            logger.info("model: materialising %s (%s) as safetensors", params.base, source["kind"])
            provenance = base_models.materialise(params.base, source, out)
            logger.info("model: %s parameters, hidden size %s, licence %s", f"{provenance['parameters']:,}",
                        provenance["hidden_size"], provenance.get("licence", "see the source"))
            counts = {"parameters": provenance["parameters"], "hidden_size": provenance["hidden_size"],
                      "base": params.base, "source": provenance}
        fmt = base_models.prepare_chat(out, params.chat_template, params.base)
        logger.info("model: chat format: system role %s%s", "native" if fmt.system_role else "folded into the user turn",
                    f", template variables fixed {fmt.template_kwargs}" if fmt.template_kwargs else "")
        return {**counts, "chat_format": dataclasses.asdict(fmt)}

    return publish_stage(BASE_MODEL, build)


def clip_spec(features: ArtifactRef) -> dict:
    """The CLIP the features stage embedded with (its parameters), for the projector's spec."""
    params = features.manifest()["parameters"].get("params", {})
    return {"model": params.get("clip_model"), "pretrained": params.get("pretrained"), "seed": params.get("seed", 0)}


@task(name="train", cache_policy=CHECKPOINTS, persist_result=True, tags=[GPU_TAG])
def train(store: str, domain: str, dataset_ref: ArtifactRef, features: ArtifactRef, base: ArtifactRef,
          params: TrainingConfig, image_tokens: int, runtime: dict, load_in_4bit: bool = False) -> ArtifactRef:
    """`runtime` (backend, device, dtype, library versions) is part of the version: a new torch or
    a GPU machine trains anew rather than reusing checkpoints made under other maths. Training
    itself runs where `runtime["backend"]` says: here for hf, in a process of its own for unsloth."""
    logger = get_run_logger()
    scratch = state_dir() / "work" / f"{scratch_dirs.PREFIX}{CHECKPOINTS.version(stage_inputs())}"
    vectors = read_features(features.local_path() / "features.parquet")

    def build(out: Path) -> dict:
        scratch_dirs.claim(scratch)
        for name in scratch_dirs.clean_others(scratch):
            logger.info("train: removed %s, scratch of another version whose run is gone", name)
        bar = create_progress_artifact(progress=0.0, key=f"{domain}-training",
                                       description=f"training step of {params.max_steps}")

        def progress(step: int, max_steps: int) -> None:
            update_progress_artifact(bar, progress=100.0 * step / max(max_steps, 1),
                                     description=f"training step {step} of {max_steps}")

        checkpoints = worker.train_checkpoints(
            backend=runtime["backend"], dataset_dir=dataset_ref.local_path(), features=vectors,
            clip_dim=features.manifest()["counts"]["embed_dim"], base_model=base_model_location(base),
            output_dir=scratch, cfg=params, image_tokens=image_tokens, log=logger.info, progress=progress,
            clip=clip_spec(features), load_in_4bit=load_in_4bit)
        published = sft.publish_checkpoints(scratch, out)
        sft.plot_losses(published[-1].path / "trainer_state.json", out / LOSS_PLOT, title=f"{domain}: loss per step")
        labels = json.loads((out / sft.LABELS_FILE).read_text())
        run = json.loads((out / sft.TRAINING_RUN_FILE).read_text())
        for backoff in run["oom_backoffs"]:
            logger.warning("train: out of GPU memory at step %s; went on with batch %s x accumulation %s",
                           backoff["at_step"], backoff["batch_size"], backoff["gradient_accumulation_steps"])
        return {"checkpoints": len(published), "steps": checkpoints[-1].step, "backend": run["backend"],
                "load_in_4bit": run["load_in_4bit"], "images": run["images"],
                "oom_backoffs": len(run["oom_backoffs"]), "training_run": run,
                "examples_without_trainable_tokens": labels["no_trainable_tokens"],
                "examples_with_truncated_answers": labels["truncated_answers"], "label_check": labels}

    ref = publish_stage(CHECKPOINTS, build)
    shutil.rmtree(scratch, ignore_errors=True)
    announce_png(f"{domain}-loss-curve", ref.local_path() / LOSS_PLOT, "loss per step",
                 f"training and validation loss (checkpoints {ref.version})")
    return ref
