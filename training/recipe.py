"""The training recipe as plain values: what the SFT loop, the unsloth helper and the worker take.

The domain config (`loretune.config.TrainingConfig`) validates what a user writes; the task turns it
into a `Recipe` at the Prefect boundary, so the training loop can be called, tested and run in the
unsloth worker process without the config module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from loretune.settings import from_values


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    use_rslora: bool = False
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    modules_to_save: tuple[str, ...] = ()  # fully trained modules; the image projector is always added


@dataclass(frozen=True)
class Recipe:
    backend: str = "auto"
    lora: LoraSpec = field(default_factory=LoraSpec)
    learning_rate: float = 3e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    max_steps: int = 480
    save_steps: int = 120
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 256
    packing: bool = False
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    attn_implementation: str = "sdpa"
    precision: str = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16, else fp32
    seed: int = 0
    # single: train in the caller's process (or the unsloth worker's). accelerate: the hf backend
    # under `accelerate launch`, `num_processes` DDP processes (`training/launch.py`).
    launcher: str = "single"
    num_processes: int = 2

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Recipe:
        """From the config's dump (or `dataclasses.asdict`'s, read back from JSON): lists become
        tuples, and a key the recipe does not take is an error (`loretune.settings.from_values`).
        The budget in epochs or exposures and the retention share are resolved before training
        (`tasks/training.resolve_recipe`): here they must be unset."""
        values = dict(values)
        unresolved = [k for k in ("epochs", "exposures") if values.pop(k, None) is not None]
        if values.pop("retention", 0.0):
            unresolved.append("retention")
        if unresolved:
            raise ValueError(f"a recipe takes steps: resolve {', '.join(unresolved)} first "
                             "(tasks/training.resolve_recipe)")
        values.pop("checkpoints", None)
        lora = from_values(LoraSpec, values.pop("lora", {}))
        return from_values(cls, {**values, "lora": lora})


def budget_steps(*, max_steps: int, epochs: float | None, exposures: float | None, train_examples: int,
                 statements_per_epoch: float | None, effective_batch: int) -> tuple[int, str]:
    """Optimizer steps for a budget stated as steps, epochs, or exposures per fact, and the budget
    in words. Exposures are what teaching a fact is measured in (`dataset/fact_renderings.py`): an
    epoch exposes a fact as often as the training split states it (`statements_per_epoch`, the
    dataset's mean over its infobox facts), so `exposures` / that is the epochs to run."""
    if exposures is not None:
        if not statements_per_epoch:
            raise ValueError("training.exposures: this dataset states no infobox fact, so a budget in exposures "
                             "per fact means nothing; set training.epochs or training.max_steps instead")
        epochs = exposures / statements_per_epoch
    if epochs is None:
        return max_steps, f"{max_steps} steps"
    steps = max(1, math.ceil(epochs * train_examples / effective_batch))
    said = f"{epochs:.2f} epochs of {train_examples} examples"
    if statements_per_epoch:
        said += f", {epochs * statements_per_epoch:.1f} exposures per fact"
    return steps, f"{steps} steps ({said})"
