"""LoRA through unsloth's FastLanguageModel: the `unsloth` training backend.

Imported only inside the training worker process after `import unsloth` (`training/worker.py`):
unsloth patches transformers, PEFT and TRL at import and must come before them in its process.

It trains exactly what the hf backend trains: the same r, alpha, dropout, target modules, rsLoRA
and gradient checkpointing, and the image projector as a fully trained module saved with the
adapter, so the checkpoints have the same layout and evaluation and export read them unchanged.
Two things differ from the hf path, each for a reason in unsloth:

- unsloth's `get_peft_model` accepts only embeddings and norms in `modules_to_save`, so the
  projector is made a PEFT modules-to-save wrapper after the LoRA wrap, by PEFT's own function;
  `adapter_config.json` then lists it, as it does for the hf backend.
- unsloth loads a view of the model folder whose tokenizer lacks the image placeholder: the
  placeholder lies past the embedding matrix by design (`multimodal/fusion.py`), and unsloth grows
  the embeddings to the tokenizer's length (seen on an H200: 49153 rows for SmolLM2's 49152), which
  makes PEFT save both embedding matrices whole into the adapter, which the base then cannot load.
  Training uses the folder's own tokenizer, placeholder included, read as the hf backend reads it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from unsloth import FastLanguageModel  # first: this module is imported only where unsloth may patch

from loretune.training.recipe import Recipe


def load(base_model: str, cfg: Recipe, load_in_4bit: bool, view: Path) -> tuple[Any, Any]:
    """Tokenizer and unsloth's model from the model stage's folder, bf16 or 4-bit, on the GPU;
    `view` is a scratch folder for `text_only_view`."""
    from transformers import AutoTokenizer

    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(text_only_view(Path(base_model), view)),
        max_seq_length=cfg.max_length,
        dtype=torch.bfloat16,
        load_in_4bit=load_in_4bit,
        fix_tokenizer=False,
        offload_embedding=False,  # the image fusion embeds on the GPU, beside the projector
        use_gradient_checkpointing=checkpointing(cfg),  # its default, "unsloth", would turn it on here
        random_state=cfg.seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model


def text_only_view(base_model: Path, view: Path) -> Path:
    """`base_model` as unsloth should see it: its files linked, its tokenizer files copied without
    the image placeholder. Absolute, since unsloth takes a relative a/b for a hub id."""
    from loretune.model.chat_format import IMAGE_TOKEN, strip_added_token

    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    for path in sorted(base_model.resolve().iterdir()):
        if path.name in TOKENIZER_FILES:
            shutil.copy2(path, view / path.name)
        else:
            (view / path.name).symlink_to(path)
    strip_added_token(view, IMAGE_TOKEN)
    return view.resolve()


TOKENIZER_FILES = frozenset({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"})


def checkpointing(cfg: Recipe) -> str | bool:
    """unsloth's own gradient checkpointing (activations offloaded to CPU memory) where the config asks for it."""
    return "unsloth" if cfg.gradient_checkpointing else False


def wrap(model: Any, cfg: Recipe, extra_modules: list[str]) -> Any:
    """unsloth's LoRA wrap with the config's settings, then `extra_modules` (the projector) trained
    in full and saved with the adapter, as PEFT's `modules_to_save` does on the hf path."""
    from peft.tuners.tuners_utils import BaseTuner
    from peft.utils.other import set_additional_trainable_modules

    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        use_rslora=cfg.lora.use_rslora,
        modules_to_save=list(cfg.lora.modules_to_save) or None,
        use_gradient_checkpointing=checkpointing(cfg),
        random_state=cfg.seed,
        bias="none",
    )
    config = model.peft_config[model.active_adapter]
    config.modules_to_save = sorted({*(config.modules_to_save or []), *extra_modules})
    set_additional_trainable_modules(model=model.base_model, peft_config=config,
                                     model_config=BaseTuner.get_model_config(model), adapter_name=model.active_adapter)
    return model
