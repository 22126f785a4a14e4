"""Which layers LoRA adapts, resolved against the model in hand.

`training.lora.target_modules` is either `["all-linear"]` (every linear layer of the language
model: attention and MLP projections, whatever the architecture names them; never the LM head,
whose weight Gemma and SmolLM2 tie to the embedding, nor the image projector, which is trained in
full) or a list of module names. A list is checked against the model before training: a name no
module has would otherwise train nothing there, silently (PEFT raises only when no name matches).
Resolved here rather than left to PEFT's own "all-linear" because unsloth's wrapper takes only
names, and the adapter config should name the same layers on either backend.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from loretune.multimodal.fusion import PROJECTOR_NAME

ALL_LINEAR = "all-linear"


class LoraTargetError(ValueError):
    """A configured target names no module of the model; the message lists what it has."""


def linear_layer_names(model: Any) -> list[str]:
    """The distinct last-component names of the model's linear layers, LM head and projector excluded."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module is not head
             and PROJECTOR_NAME not in name.split(".")}
    return sorted(names)


def resolve_targets(model: Any, configured: Sequence[str]) -> list[str]:
    """The module names LoRA wraps for `configured` on this model."""
    available = linear_layer_names(model)
    if list(configured) == [ALL_LINEAR]:
        return available
    if ALL_LINEAR in configured:
        raise LoraTargetError(f"training.lora.target_modules: {ALL_LINEAR!r} stands alone; got {list(configured)}")
    modules = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [name for name in configured if name not in modules]
    if missing:
        architecture = type(model).__name__
        raise LoraTargetError(
            f"training.lora.target_modules: {', '.join(map(repr, missing))} name no module of {architecture}; "
            f"its linear layers are {', '.join(available)}; set target_modules to those you want, or to "
            f"['{ALL_LINEAR}']")
    return list(configured)
