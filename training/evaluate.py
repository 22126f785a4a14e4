"""Score every checkpoint, and the untrained start as step 0, on the binary-choice set.

A question is answered by comparing the log-likelihood the model gives each option as the
assistant's reply, not by generating text and parsing it: no decoding settings, no parser errors,
and a margin that moves smoothly as training proceeds. `accuracy` compares summed log-likelihoods,
`accuracy_norm` per-token means (so a longer option is not penalised for its length).

The base model is loaded once; each checkpoint is a PEFT adapter switched in by name, and step 0
is the same model with adapters disabled (the projector then is its seeded initial state, exactly
what training started from).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from datasets import Dataset
from peft import PeftModel

from loretune.multimodal.fusion import attach_projector, fuse
from loretune.training.backends import default_device, load_base
from loretune.training.chat import IGNORE, encode_chat
from loretune.training.sft import MULTIMODAL_FILE, Checkpoint, FusionCollator

TABLE_COLUMNS = ["step", "checkpoint", "questions", "accuracy", "accuracy_norm", "accuracy_fact",
                 "accuracy_image", "mean_margin", "eval_loss"]


def option_rows(questions: Dataset, tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    rows = []
    for q_index, q in enumerate(questions):
        for o_index, option in enumerate(q["options"]):
            messages = [
                {"role": "system", "content": q["system"]},
                {"role": "user", "content": q["question"]},
                {"role": "assistant", "content": option},
            ]
            rows.append({**encode_chat(tokenizer, messages, max_length), "image_sha256": q["image_sha256"],
                         "question": q_index, "option": o_index})
    return rows


@torch.no_grad()
def option_logprobs(model: Any, batches: Iterator[dict[str, torch.Tensor]], device: str) -> list[tuple[float, int]]:
    """(summed log-prob, token count) of each row's labelled tokens."""
    scores = []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        fused = fuse(model, batch["input_ids"], batch["attention_mask"], batch["image_features"],
                     batch["has_image"], batch["labels"])
        logits = model(inputs_embeds=fused["inputs_embeds"], attention_mask=fused["attention_mask"]).logits
        labels = fused["labels"][:, 1:]
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        mask = labels != IGNORE
        picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        scores += list(zip(picked.sum(-1).tolist(), mask.sum(-1).tolist()))
    return scores


def score(model: Any, rows: list[dict[str, Any]], questions: Dataset, collator: FusionCollator,
          batch_size: int, device: str) -> dict[str, float]:
    batches = (collator(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size))
    logprob = np.zeros((len(questions), 2))
    tokens = np.ones((len(questions), 2))
    for row, (total, count) in zip(rows, option_logprobs(model, batches, device)):
        logprob[row["question"], row["option"]] = total
        tokens[row["question"], row["option"]] = max(count, 1)
    answer = np.array(questions["answer"])
    kinds = np.array(questions["kind"])
    idx = np.arange(len(answer))
    correct = logprob.argmax(1) == answer
    correct_norm = (logprob / tokens).argmax(1) == answer

    def mean_where(values: np.ndarray, where: np.ndarray) -> float | None:
        return float(values[where].mean()) if where.any() else None

    return {
        "questions": int(len(answer)),
        "accuracy": float(correct.mean()),
        "accuracy_norm": float(correct_norm.mean()),
        "accuracy_fact": mean_where(correct, kinds == "fact"),
        "accuracy_image": mean_where(correct, kinds == "image"),
        "mean_margin": float((logprob[idx, answer] - logprob[idx, 1 - answer]).mean()),
    }


def evaluate_checkpoints(
    *,
    base_model: str,
    checkpoints: Sequence[Checkpoint],
    questions: Dataset,
    features: dict[str, np.ndarray],
    batch_size: int,
    max_length: int,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """One row per checkpoint plus step 0; see TABLE_COLUMNS."""
    if not checkpoints:
        raise ValueError("no checkpoints to evaluate")
    spec = json.loads((checkpoints[0].path.parent / MULTIMODAL_FILE).read_text())
    device = default_device()
    tokenizer, model = load_base(base_model, device)
    attach_projector(model, spec["clip_dim"], spec["image_tokens"], seed=spec["projector_seed"],
                     stats=spec.get("feature_stats"))
    model = PeftModel.from_pretrained(model, str(checkpoints[0].path), adapter_name=_name(checkpoints[0]))
    for checkpoint in checkpoints[1:]:
        model.load_adapter(str(checkpoint.path), adapter_name=_name(checkpoint))
    model.eval()

    rows = option_rows(questions, tokenizer, max_length)
    collator = FusionCollator(tokenizer.pad_token_id, features, spec["clip_dim"])
    losses = _eval_losses(checkpoints[-1].path)
    table = []
    for step, checkpoint in [(0, None), *[(c.step, c) for c in checkpoints]]:
        if checkpoint is None:
            context = model.disable_adapter()
        else:
            model.set_adapter(_name(checkpoint))
            context = nullcontext()
        with context:
            result = score(model, rows, questions, collator, batch_size, device)
        table.append({"step": step, "checkpoint": checkpoint.path.name if checkpoint else "base",
                      **result, "eval_loss": losses.get(step)})
        log(f"evaluate: step {step}: accuracy {result['accuracy']:.3f} over {result['questions']} questions")
    return table


def _name(checkpoint: Checkpoint) -> str:
    return f"step-{checkpoint.step}"


def _eval_losses(last_checkpoint: Path) -> dict[int, float]:
    """Validation loss per step, from the trainer's own log (absent if there was no validation split)."""
    state_file = last_checkpoint / "trainer_state.json"
    if not state_file.exists():
        return {}
    history = json.loads(state_file.read_text()).get("log_history", [])
    return {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}


def plot(table: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in table]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for column, style in [("accuracy", "o-"), ("accuracy_fact", "s--"), ("accuracy_image", "^--")]:
        values = [r[column] for r in table]
        if all(v is not None for v in values):
            ax.plot(steps, values, style, label=column)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":", label="chance")
    ax.set(xlabel="training step", ylabel="binary-choice accuracy", ylim=(0, 1.02), title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
