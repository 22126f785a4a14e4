"""The causal-LM loss projected through the LM head at labelled positions only.

Why not TRL's: on a GPU TRL's fused LM head scores only labelled positions too, but on a CPU it
projects every position through the vocabulary (49k rows for SmolLM2) and computes the entropy of
each for a logged metric. A chat example's answer is a fraction of its tokens (a fact turn's
sentence among the system prompt, the question and the template), so most of that work is thrown
away. Here the backbone runs once, and only the hidden states whose next token is labelled meet
the LM head; the loss is the same sum over labelled tokens, divided as TRL divides it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from loretune.model.chat_format import IGNORE

# Config attributes that rescale logits in ways this loss does not reproduce: such models keep TRL's loss.
RESCALING = ("logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier")


def supports(model: Any) -> bool:
    """Whether `labelled_loss` computes this model's loss exactly (a plain or soft-capped LM head)."""
    config = _causal_lm(model).config.get_text_config()
    return all(getattr(config, name, None) in (None, 1.0) for name in RESCALING)


def labelled_loss(model: Any, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                  num_items_in_batch: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, correct next-token predictions, labelled tokens) for one batch; `inputs` are the
    backbone's (`inputs_embeds` or `input_ids`, `attention_mask`)."""
    lm = _causal_lm(model)
    backbone = getattr(lm, lm.base_model_prefix)
    hidden = backbone(**inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:].to(hidden.device)
    mask = targets != IGNORE
    logits = lm.get_output_embeddings()(hidden[:, :-1][mask]).float()
    cap = getattr(lm.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    wanted = targets[mask]
    summed = F.cross_entropy(logits, wanted, reduction="sum")
    count = mask.sum()
    divisor = torch.as_tensor(num_items_in_batch if num_items_in_batch is not None else count).clamp(min=1)
    correct = (logits.detach().argmax(-1) == wanted).sum()
    return summed / divisor.to(summed.device), correct, count


def _causal_lm(model: Any) -> Any:
    """The transformers model under PEFT's wrappers (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
