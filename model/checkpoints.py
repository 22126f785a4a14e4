"""The checkpoint layout a training run publishes, and loading a base model ready for its adapters.

Training writes this layout; evaluation, export and the chat UI read it. It lives with the model so
the readers never import the training loop.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from loretune.model.chat_format import ChatFormat, add_image_token
from loretune.model.loading import default_device, load_base
from loretune.multimodal.fusion import attach_projector

MULTIMODAL_FILE = "loretune_multimodal.json"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


# The Trainer writes a checkpoint's files one by one and this one last: a folder without it was
# cut short by a kill, and resuming from it would fail (or worse, load a torn optimizer state).
COMPLETE_MARKER = "trainer_state.json"


def list_checkpoints(output_dir: Path) -> list[Checkpoint]:
    """The complete checkpoints in `output_dir`, oldest first."""
    found = [Checkpoint(int(p.name.split("-")[1]), p) for p in output_dir.glob("checkpoint-*")
             if p.is_dir() and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda c: c.step)


def eval_losses(checkpoint: Path) -> dict[int, float]:
    """Validation loss per step, from the trainer's own log (absent if there was no validation split)."""
    state_file = checkpoint / COMPLETE_MARKER
    if not state_file.exists():
        return {}
    history = json.loads(state_file.read_text()).get("log_history", [])
    return {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}


@dataclass
class Loaded:
    """A base model ready for the checkpoints of one training run: tokenizer, model with the
    projector as training initialised it, the chat format, and the run's multimodal spec."""

    tokenizer: Any
    model: Any
    fmt: ChatFormat
    spec: dict[str, Any]
    device: str


def load_for_checkpoints(base_model: str, checkpoints_dir: Path, attn_implementation: str = "sdpa") -> Loaded:
    """What evaluation and the before/after both need before loading an adapter from `checkpoints_dir`."""
    spec = json.loads((checkpoints_dir / MULTIMODAL_FILE).read_text())
    device = default_device()
    tokenizer, model = load_base(base_model, device, attn_implementation)
    attach_projector(model, spec["clip_dim"], spec["image_tokens"], seed=spec["projector_seed"],
                     stats=spec.get("feature_stats"), image_token_id=add_image_token(tokenizer))
    return Loaded(tokenizer, model, ChatFormat.load(Path(base_model)), spec, device)


def adapter_name(checkpoint: Checkpoint) -> str:
    return f"step-{checkpoint.step}"


def load_adapters(base_model: str, checkpoints: Sequence[Checkpoint],
                  attn_implementation: str = "sdpa") -> tuple[Loaded, Any]:
    """The base once, every checkpoint's adapter loaded beside it under its step's name: switching
    checkpoints is then `at_step`, not a reload."""
    from peft import PeftModel

    if not checkpoints:
        raise ValueError("no checkpoints to load")
    loaded = load_for_checkpoints(base_model, checkpoints[0].path.parent, attn_implementation)
    model = PeftModel.from_pretrained(loaded.model, str(checkpoints[0].path), adapter_name=adapter_name(checkpoints[0]))
    for checkpoint in checkpoints[1:]:
        model.load_adapter(str(checkpoint.path), adapter_name=adapter_name(checkpoint))
    return loaded, model.eval()


def at_step(model: Any, checkpoint: Checkpoint | None) -> AbstractContextManager:
    """The model as it was at `checkpoint`, or as training started (adapters off: step 0; the
    projector is then its seeded initial state, exactly what training started from)."""
    if checkpoint is None:
        return model.disable_adapter()
    model.set_adapter(adapter_name(checkpoint))
    return nullcontext()
