"""How an image enters the language model: CLIP features -> soft tokens -> input embeddings.

LLaVA-style: the user turn holds `n_tokens` copies of a placeholder token where the image belongs
(`training.chat.ChatFormat.with_image`); `fuse` embeds the text and overwrites those positions with
the projector's output, so the image sits inside the conversation, after BOS and the system turn,
exactly where the chat template put the placeholder. A row without an image has no placeholder
and is embedded exactly as the plain model would embed it.

The placeholder's id may lie past the model's vocabulary (the base model is not resized): it is
replaced by the pad id before the embedding lookup, and it is never a label.

The projector maps one CLIP embedding to `n_tokens` vectors in the LLM's embedding space through a
bottleneck of at most `MAX_WIDTH`: one layer to `n_tokens` x width, one shared layer width ->
hidden. Its size grows linearly with the hidden size (about 1.3M parameters for a 4096-wide model
with a 512-wide CLIP and 2 tokens) rather than as hidden^2 x n_tokens, as a full MLP would.

It is attached to the base model as the `image_projector` submodule, so PEFT trains and saves it
with the adapter (`modules_to_save`) and loads it back with it.

It standardises its input with the training features' mean and scale first: CLIP embeddings of one
corpus share a large common direction (with random weights, pairwise cosine ~0.9 on the sample
snapshot; ~0.05 once centred), and an MLP fed near-identical vectors cannot tell images apart.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

PROJECTOR_NAME = "image_projector"


MAX_WIDTH = 256


class ImageProjector(nn.Module):
    def __init__(self, clip_dim: int, hidden_size: int, n_tokens: int, image_token_id: int | None = None):
        super().__init__()
        self.n_tokens = n_tokens
        self.hidden_size = hidden_size
        self.width = min(hidden_size, MAX_WIDTH)
        self.image_token_id = image_token_id
        self.register_buffer("feature_mean", torch.zeros(clip_dim))
        self.register_buffer("feature_scale", torch.ones(()))
        self.expand = nn.Linear(clip_dim, n_tokens * self.width)
        self.act = nn.GELU()
        self.out = nn.Linear(self.width, hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        standardised = (features - self.feature_mean) * self.feature_scale
        tokens = self.act(self.expand(standardised)).view(features.shape[0], self.n_tokens, self.width)
        return self.out(tokens)


def projector_parameters(clip_dim: int, hidden_size: int, n_tokens: int) -> int:
    """Trainable parameters of the projector for a model this wide (reported, and tested bounded)."""
    width = min(hidden_size, MAX_WIDTH)
    return clip_dim * n_tokens * width + n_tokens * width + width * hidden_size + hidden_size


def feature_stats(vectors: np.ndarray) -> dict[str, list[float] | float]:
    """Mean and 1/std of a corpus's image features ([n, dim]): what the projector standardises with."""
    x = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
    if x.ndim != 2 or len(x) < 2:  # no images, or too few to estimate: leave features as they are
        return {"mean": [], "scale": 1.0}
    mean = x.mean(0)
    std = (x - mean).std().item()
    return {"mean": mean.tolist(), "scale": 1.0 / std if std > 0 else 1.0}


def attach_projector(model: nn.Module, clip_dim: int, n_tokens: int, seed: int,
                     stats: dict[str, list[float] | float] | None = None,
                     image_token_id: int | None = None) -> ImageProjector:
    """Give `model` a freshly initialised projector; the seed makes step 0 reproducible."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    embeddings = model.get_input_embeddings()
    projector = ImageProjector(clip_dim, embeddings.embedding_dim, n_tokens, image_token_id).to(
        device=embeddings.weight.device, dtype=torch.float32
    )
    torch.random.set_rng_state(generator_state)
    if stats and stats["mean"]:
        projector.feature_mean.copy_(torch.tensor(stats["mean"]))
        projector.feature_scale.fill_(float(stats["scale"]))
    setattr(model, PROJECTOR_NAME, projector)
    return projector


def find_projector(model: nn.Module) -> nn.Module:
    """The projector as the model currently uses it (PEFT wraps it; its wrapper picks the adapter)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return getattr(base, PROJECTOR_NAME)
    except AttributeError:
        raise LookupError(f"model has no {PROJECTOR_NAME}: call attach_projector before wrapping it") from None


def fuse(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_features: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Model inputs with each image's soft tokens at its placeholder: `inputs_embeds`,
    `attention_mask` and, if given, `labels` (unchanged: placeholders sit in the prompt)."""
    projector = find_projector(model)
    token_id = projector.image_token_id
    slots = input_ids == token_id if token_id is not None else torch.zeros_like(input_ids, dtype=torch.bool)
    embeddings = model.get_input_embeddings()
    text = embeddings(input_ids.masked_fill(slots, 0) if token_id is not None else input_ids)
    fused = {"inputs_embeds": text, "attention_mask": attention_mask,
             **({"labels": labels} if labels is not None else {})}
    if not bool(slots.any()):
        return fused
    per_row = slots.sum(dim=1)
    rows = per_row.nonzero().squeeze(1)
    if bool((per_row[rows] != projector.n_tokens).any()):
        raise ValueError(f"each image needs exactly {projector.n_tokens} placeholder tokens in its row, found "
                         f"{per_row[rows].tolist()}: was the prompt truncated through the image?")
    # In the projector's own dtype: fp32 as attached, but the hf backend's 4-bit (QLoRA) path on CUDA
    # leaves it in bf16 (seen on an H200: "mat1 and mat2 must have the same dtype").
    weights = next(projector.parameters()).dtype
    soft = projector(image_features[rows].to(weights)).to(text.dtype)
    fused["inputs_embeds"] = text.masked_scatter(slots.unsqueeze(-1), soft.reshape(-1, text.shape[-1]))
    return fused
