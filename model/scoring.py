"""The label-masked log-likelihood: how likely a model finds the labelled tokens of each row.

Binary-choice evaluation and the export's parity check both score this way (lm-evaluation-harness's
`loglikelihood`: the summed log-probability of the continuation given the context), so a merged or
GGUF export's accuracy means what the evaluation table means.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from loretune.model.chat_format import IGNORE
from loretune.model.collator import FusionCollator
from loretune.multimodal.fusion import fuse


def labelled_logprob_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of every labelled token (label != IGNORE) given those
    before it. `logits` (rows x positions x vocabulary) at position t predict the token at t + 1."""
    return target_logprob_sums(logits[:, :-1], labels[:, 1:])


def target_logprob_sums(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of each target token (target != IGNORE) under the logits
    at the same position. Only targeted positions go through log-softmax, so memory is
    (target tokens x vocabulary)."""
    mask = targets != IGNORE
    picked = torch.log_softmax(logits[mask].float(), dim=-1).gather(-1, targets[mask].unsqueeze(-1))
    return torch.zeros(len(targets), device=picked.device).index_add_(0, mask.nonzero()[:, 0], picked.squeeze(-1))


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose logits predict a labelled token in any row of the batch, ascending."""
    return (labels[:, 1:] != IGNORE).any(dim=0).nonzero()[:, 0]


@torch.no_grad()
def loglikelihoods(model: Any, rows: list[dict[str, Any]], collator: FusionCollator, batch_size: int,
                   device: str) -> np.ndarray:
    """Summed log-probability of each row's labelled tokens, in the rows' order; longest rows first,
    so batches pad little. Images are fused in at their placeholders, as in training.

    The model projects to the vocabulary only at the positions that predict a labelled token
    (transformers' `logits_to_keep`): a binary-choice row labels its last few tokens, and the
    vocabulary projection of every other position (a fifth of SmolLM2's forward) was thrown away."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    scores = np.zeros(len(rows))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collator([rows[i] for i in chunk]).items()}
        fused = fuse(model, batch["input_ids"], batch["attention_mask"], batch["image_features"], batch["labels"])
        keep = labelled_positions(fused["labels"])
        logits = model(inputs_embeds=fused["inputs_embeds"], attention_mask=fused["attention_mask"],
                       logits_to_keep=keep).logits
        scores[chunk] = target_logprob_sums(logits, fused["labels"][:, keep + 1]).cpu().numpy()
    return scores
