"""The training recipe as plain values: what the SFT loop, the unsloth helper and the worker take.

The domain config (`loretune.config.TrainingConfig`) validates what a user writes; the task turns it
into a `Recipe` at the Prefect boundary, so the training loop can be called, tested and run in the
unsloth worker process without the config module.
"""

from __future__ import annotations

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
    seed: int = 0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Recipe:
        """From the config's dump (or `dataclasses.asdict`'s, read back from JSON): lists become
        tuples, and a key the recipe does not take is an error (`loretune.settings.from_values`)."""
        values = dict(values)
        lora = from_values(LoraSpec, values.pop("lora", {}))
        return from_values(cls, {**values, "lora": lora})
