"""Score every checkpoint, and the untrained start as step 0, on every evaluation set.

Scoring follows lm-evaluation-harness's multiple-choice semantics exactly, so a number here means
what it means there (a test runs lm-eval itself on the same items and model and compares):

- the context is the chat template's rendering of (system, question) with the generation prompt,
  in the model's recorded chat format (`training.chat.ChatFormat`: the same as training's), with an
  image's placeholder tokens in the user turn; each choice is a continuation, scored as the
  assistant's reply;
- context and continuation are encoded together and split at the context's length, with the
  context's trailing whitespace moved onto the continuation (lm-eval's `_encode_pair`);
- `acc` takes the choice with the highest summed log-likelihood; `acc_norm` divides that by the
  choice's length in characters; ties go to the first choice, as `np.argmax` gives them.

Unlike lm-eval, an item whose longest choice does not fit `max_length` is dropped and counted
rather than left-truncated, so a truncated choice is never scored.

The base model is loaded once; each checkpoint is a PEFT adapter switched in by name, and step 0
is the same model with adapters disabled (`model/checkpoints.py`: `load_adapters`, `at_step`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from loretune.failpoints import failpoint
from loretune.model.chat_format import IGNORE, ChatFormat, question_messages
from loretune.model.checkpoints import Checkpoint, at_step, eval_losses, load_adapters
from loretune.model.collator import FusionCollator
from loretune.model.loading import autocast
from loretune.model.scoring import loglikelihoods
from loretune.stats import mcnemar_p, mean_stderr, paired_difference

TABLE_COLUMNS = ["step", "checkpoint", "set", "n", "dropped", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr",
                 "delta_acc", "delta_acc_ci_low", "delta_acc_ci_high", "delta_acc_norm", "delta_acc_norm_ci_low",
                 "delta_acc_norm_ci_high", "mcnemar_p", "eval_loss"]


# --- requests: lm-eval's encoding ---------------------------------------------------------------


def chat_context(tokenizer: Any, system: str, question: str, fmt: ChatFormat | None = None,
                 image_tokens: int = 0) -> str:
    fmt = fmt or ChatFormat()
    messages = question_messages(system, question)
    if image_tokens:
        messages = fmt.with_image(messages, image_tokens)
    return fmt.render(tokenizer, messages, add_generation_prompt=True)


def tok_encode(tokenizer: Any, text: str) -> list[int]:
    """lm-eval's HFLM.tok_encode: no second BOS when the text already starts with one."""
    bos = tokenizer.bos_token or tokenizer.decode([tokenizer.eos_token_id])
    if bos and text.startswith(bos):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: encode together, split at the context's own length."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation)
    context_ids = tok_encode(tokenizer, context)
    return context_ids, whole[len(context_ids):]


@dataclass
class Requests:
    """One row per (item, choice) that fits, and which items were dropped for length."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    dropped: int = 0


def build_requests(items: Sequence[dict[str, Any]], tokenizer: Any, system: str, max_length: int,
                   fmt: ChatFormat | None = None, features: dict[str, Any] | None = None,
                   image_tokens: int = 0) -> Requests:
    """`features`: the items whose image has features get its placeholder, as in training."""
    requests = Requests()
    for index, item in enumerate(items):
        pictured = bool(features) and (item.get("image_sha256") or "") in features
        context = chat_context(tokenizer, system, item["question"], fmt, image_tokens if pictured else 0)
        pairs = [encode_pair(tokenizer, context, choice) for choice in item["choices"]]
        if any(len(c) + len(x) > max_length or not x for c, x in pairs):
            requests.dropped += 1  # never score a truncated (or empty) choice
            continue
        requests.kept.append(index)
        for choice, (context_ids, continuation) in enumerate(pairs):
            requests.rows.append({"input_ids": context_ids + continuation,
                                  "labels": [IGNORE] * len(context_ids) + continuation,
                                  "image_sha256": item.get("image_sha256") or "",
                                  "item": len(requests.kept) - 1, "choice": choice})
    return requests


# --- per set: scores, then the table -----------------------------------------------------------


@dataclass
class SetScores:
    n: int
    dropped: int
    correct: np.ndarray  # per kept item, bool
    correct_norm: np.ndarray
    loglikelihoods: list[list[float]]


def score_set(items: Sequence[dict[str, Any]], requests: Requests, lls: np.ndarray) -> SetScores:
    per_item: list[list[float]] = [[] for _ in requests.kept]
    for row, ll in zip(requests.rows, lls):
        per_item[row["item"]].append(float(ll))
    correct, correct_norm = [], []
    for index, item_lls in zip(requests.kept, per_item):
        item = items[index]
        lengths = np.array([float(len(c)) for c in item["choices"]])
        correct.append(int(np.argmax(item_lls)) == item["answer"])
        correct_norm.append(int(np.argmax(np.array(item_lls) / lengths)) == item["answer"])
    return SetScores(len(requests.kept), requests.dropped, np.array(correct, dtype=bool),
                     np.array(correct_norm, dtype=bool), per_item)


def table_row(step: int, checkpoint: str, name: str, scores: SetScores, base: SetScores) -> dict[str, Any]:
    delta = paired_difference(scores.correct, base.correct)
    delta_norm = paired_difference(scores.correct_norm, base.correct_norm)
    return {
        "step": step, "checkpoint": checkpoint, "set": name, "n": scores.n, "dropped": scores.dropped,
        "acc": float(scores.correct.mean()) if scores.n else None, "acc_stderr": mean_stderr(scores.correct),
        "acc_norm": float(scores.correct_norm.mean()) if scores.n else None,
        "acc_norm_stderr": mean_stderr(scores.correct_norm),
        "delta_acc": delta[0], "delta_acc_ci_low": delta[1], "delta_acc_ci_high": delta[2],
        "delta_acc_norm": delta_norm[0], "delta_acc_norm_ci_low": delta_norm[1],
        "delta_acc_norm_ci_high": delta_norm[2], "mcnemar_p": mcnemar_p(scores.correct, base.correct),
    }


def score_sets(model: Any, requests: dict[str, Requests], sets: dict[str, Sequence[dict[str, Any]]],
               collator: FusionCollator, batch_size: int, device: str) -> dict[str, SetScores]:
    """The model as it stands (adapter chosen by the caller) on every set."""
    return {name: score_set(sets[name], r, loglikelihoods(model, r.rows, collator, batch_size, device))
            for name, r in requests.items()}


@dataclass
class Evaluation:
    table: list[dict[str, Any]]
    per_item: list[dict[str, Any]]


def evaluate_checkpoints(
    *,
    base_model: str,
    checkpoints: Sequence[Checkpoint],
    sets: dict[str, Sequence[dict[str, Any]]],
    system: str,
    features: dict[str, np.ndarray],
    batch_size: int,
    max_length: int,
    attn_implementation: str = "sdpa",
    precision: str = "fp32",
    log: Callable[[str], None] = print,
) -> Evaluation:
    """One table row per (checkpoint, set), step 0 included; and every item's scores. `precision`
    "bf16" scores under bf16 autocast on a CPU (`model.loading.autocast`); the agreement with
    lm-evaluation-harness is tested at fp32."""
    if not checkpoints:
        raise ValueError("no checkpoints to evaluate")
    loaded, model = load_adapters(base_model, checkpoints, attn_implementation)
    tokenizer, fmt, spec, device = loaded.tokenizer, loaded.fmt, loaded.spec, loaded.device

    requests = {name: build_requests(items, tokenizer, system, max_length, fmt, features, spec["image_tokens"])
                for name, items in sets.items()}
    for name, r in requests.items():
        if r.dropped:
            log(f"evaluate: {name}: {r.dropped} of {len(sets[name])} items do not fit max_length={max_length}; dropped")
    collator = FusionCollator(tokenizer.pad_token_id, features, spec["clip_dim"])
    losses = eval_losses(checkpoints[-1].path)
    table, per_item, base = [], [], {}
    for step, checkpoint in [(0, None), *[(c.step, c) for c in checkpoints]]:
        label = checkpoint.path.name if checkpoint else "base"
        with at_step(model, checkpoint), autocast(device, precision):
            scored = score_sets(model, requests, sets, collator, batch_size, device)
            for name, scores in scored.items():
                base.setdefault(name, scores)
                table.append({**table_row(step, label, name, scores, base[name]), "eval_loss": losses.get(step)})
                per_item += [{"step": step, "set": name, "item": index, "correct": bool(ok), "correct_norm": bool(ok_norm),
                              "loglikelihoods": lls} for index, ok, ok_norm, lls in
                             zip(requests[name].kept, scores.correct, scores.correct_norm, scores.loglikelihoods)]
        shown = ", ".join(f"{r['set']} {r['acc']:.3f}" for r in table if r["step"] == step and r["acc"] is not None)
        log(f"evaluate: step {step}: acc {shown}")
        failpoint("evaluation:between-checkpoints")
    return Evaluation(table, per_item)


def plot(table: list[dict[str, Any]], baselines: dict[str, dict[str, dict[str, float]]], path: Path,
         title: str) -> None:
    """One panel per set: acc with its standard error per step, the best no-knowledge baseline, chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["set"] for r in table))
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), dpi=100, squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = [r for r in table if r["set"] == name and r["acc"] is not None]
        ax.errorbar([r["step"] for r in rows], [r["acc"] for r in rows], yerr=[r["acc_stderr"] or 0 for r in rows],
                    fmt="o-", capsize=3, label="acc ± 1 SE")
        best = max(baselines.get(name, {}).values(), key=lambda b: b["value"], default=None)
        if best is not None:
            ax.axhline(best["value"], color="tab:red", linewidth=0.8, linestyle="--", label="best no-knowledge baseline")
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":", label="chance (2 choices)")
        ax.set(xlabel="training step", ylim=(0, 1.02), title=f"{name} (n={rows[0]['n'] if rows else 0})")
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(loc="lower right", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
