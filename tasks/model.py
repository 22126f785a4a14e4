"""The model stage: the base model as a plain safetensors folder with its tokenizer and chat format.

Every base is materialised into the store, tiny or packaged or from a hub, so training, evaluation,
export and the chat UI load the same bytes from the same place.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import get_run_logger, task

from loretune.config import ModelConfig
from loretune.dataset.layout import corpus_texts
from loretune.fingerprint import stage_code_version
from loretune.model import base_models, tiny_model
from loretune.store import ArtifactRef
from loretune.tasks.stage import StageCache, publish_stage

BASE_MODEL = StageCache(stage="model", code=stage_code_version(__name__))


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
            texts = corpus_texts(dataset_ref.local_path())
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
