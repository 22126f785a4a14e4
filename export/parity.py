"""Do the adapter, the merged model and each GGUF answer the same? Checked before anything reads them.

The field's trackers are full of exports that silently differ from what was trained: a changed chat
template or EOS (the model never stops), merged QLoRA weights that lost quality, quantised files
that answer in garbage. So on fixed probes (lore questions and the first items of the evaluation
sets) every format is run and compared with the one it was made from:

- adapter -> merged: greedy token sequences identical, but for near-ties 16-bit rounding can flip
  (counted; see `greedy_flips`); logits' normalised MSE under
  `MERGED_NMSE_MAX` (the merged folder is 16-bit, the adapter runs on the fp32 base, so they are
  never bit-equal; the threshold is an order of magnitude above what 16-bit rounding gives);
- merged -> GGUF f16: logits' normalised MSE under `GGUF_F16_NMSE_MAX` (llama.cpp's f16 kernels);
- every format: the same chat template and EOS token; where the adapter stops at EOS, the merged
  model does too, and every format stops on some probe;
- each GGUF: binary-choice accuracy (lm-eval scoring) within one standard error of the merged model's.

NMSE is mean squared difference over variance of the reference, over every position and vocabulary
entry of the probe: 0 is identical, 1 is as far off as a constant guess. Every backend scores the
same token ids (the Hugging Face tokenizer's), so a difference is the model's, not tokenisation's.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from loretune.evaluation.binary_choice import build_requests
from loretune.export.layout import PROJECTOR_DIR, PROJECTOR_WEIGHTS
from loretune.model.chat_format import ChatFormat, add_image_token, question_messages
from loretune.model.checkpoints import MULTIMODAL_FILE, load_for_checkpoints
from loretune.model.collator import FusionCollator
from loretune.model.generate import Decoding, generate
from loretune.model.scoring import labelled_logprob_sums, loglikelihoods
from loretune.multimodal.fusion import attach_projector, find_projector

MERGED_NMSE_MAX = 1e-3
GGUF_F16_NMSE_MAX = 1e-4
TIE_SIGMAS = 4.0


class Runner(Protocol):
    name: str

    def logits(self, ids: Sequence[int]) -> np.ndarray: ...

    def greedy(self, ids: Sequence[int], eos_ids: set[int], max_new_tokens: int) -> tuple[list[int], bool]: ...

    def loglikelihoods(self, rows: list[dict[str, Any]]) -> np.ndarray: ...


@dataclass
class Probe:
    name: str
    ids: list[int]


def probes(tokenizer: Any, fmt: ChatFormat, system: str, questions: list[str]) -> list[Probe]:
    """Each question as the chat UI sends it: system prompt, user turn, generation prompt."""
    found = []
    for i, question in enumerate(questions):
        found.append(Probe(f"q{i}: {question[:60]}",
                           fmt.ids(tokenizer, question_messages(system, question), add_generation_prompt=True)))
    return found


class TransformersRunner:
    """A transformers model (PEFT-wrapped or plain) with its image projector attached, fp32 on the CPU.

    Binary choice is scored by the evaluation's own `loglikelihoods` (model/scoring.py), batched, so the merged
    model's accuracy here means what the evaluation table means."""

    def __init__(self, name: str, model: Any, pad_id: int, clip_dim: int):
        self.name, self.model = name, model.eval()
        self.collator = FusionCollator(pad_id, {}, clip_dim)

    def loglikelihoods(self, rows: list[dict[str, Any]]) -> np.ndarray:
        return loglikelihoods(self.model, rows, self.collator, batch_size=16, device="cpu")

    @torch.no_grad()
    def logits(self, ids: Sequence[int]) -> np.ndarray:
        tensor = torch.tensor([list(ids)])
        return self.model(input_ids=tensor, attention_mask=torch.ones_like(tensor)).logits[0].float().numpy()

    @torch.no_grad()
    def greedy(self, ids: Sequence[int], eos_ids: set[int], max_new_tokens: int) -> tuple[list[int], bool]:
        out = generate(self.model, Decoding(max_new_tokens=max_new_tokens), input_ids=ids, eos_ids=sorted(eos_ids),
                       pad_id=min(eos_ids))
        return stop_at_eos(out, eos_ids)


class LlamaCppRunner:
    """One GGUF file in llama.cpp, every position's logits kept."""

    def __init__(self, name: str, path: Path, n_ctx: int = 1024):
        from llama_cpp import Llama

        self.name = name
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0,
                         n_threads=os.cpu_count() or 1, n_batch=n_ctx)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Every position's logits; the KV cache of the prefix already evaluated is kept (as
        llama-cpp-python's own prompt cache does), so two choices after one context cost one context."""
        ids = list(ids)
        held = self.llm.input_ids[:self.llm.n_tokens].tolist()
        keep = next((i for i, (a, b) in enumerate(zip(held, ids)) if a != b), min(len(held), len(ids)))
        self.llm.n_tokens = min(keep, len(ids) - 1)  # evaluate at least the last token
        self.llm.eval(ids[self.llm.n_tokens:])
        return np.array(self.llm.scores[:len(ids)], dtype=np.float32)

    def loglikelihoods(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """Summed log-probability of each row's labelled tokens, summed as the evaluation sums them."""
        totals = np.zeros(len(rows))
        for i, row in enumerate(rows):
            logits = torch.from_numpy(self.logits(row["input_ids"])).float()
            totals[i] = float(labelled_logprob_sums(logits[None], torch.tensor([row["labels"]]))[0])
        return totals

    def greedy(self, ids: Sequence[int], eos_ids: set[int], max_new_tokens: int) -> tuple[list[int], bool]:
        """Argmax of llama.cpp's own logits, token by token on its KV cache: the same rule as
        transformers' greedy search, with no sampler in between."""
        self.llm.reset()
        self.llm.eval(list(ids))
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            new.append(token)
            if token in eos_ids:
                break
            self.llm.eval([token])
        return stop_at_eos(new, eos_ids)

    def metadata(self) -> dict[str, str]:
        return dict(self.llm.metadata)


def stop_at_eos(tokens: list[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    """The tokens before the first EOS, and whether there was one."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[:i], True
    return tokens, False


def nmse(x: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean((x - reference) ** 2) / max(np.var(reference), 1e-12))


def choice_accuracy(runner: Runner, rows: list[dict[str, Any]], n_items: int) -> tuple[float, float, list[int]]:
    """lm-eval's binary choice: the choice with the higher summed log-likelihood (ties to the first);
    acc, its standard error (lm-eval's: sample standard deviation over sqrt(n)) and each item's pick."""
    totals = runner.loglikelihoods(rows)
    scores: dict[int, dict[int, float]] = {}
    answers: dict[int, int] = {}
    for row, total in zip(rows, totals):
        scores.setdefault(row["item"], {})[row["choice"]] = float(total)
        answers[row["item"]] = row["answer"]
    picked = [max(scores[i], key=lambda c: (scores[i][c], -c)) for i in range(n_items)]
    correct = np.array([p == answers[i] for i, p in enumerate(picked)], dtype=float)
    acc = float(correct.mean()) if len(correct) else 0.0
    stderr = float(correct.std(ddof=1) / math.sqrt(len(correct))) if len(correct) > 1 else 0.0
    return acc, stderr, picked


@dataclass
class ParityReport:
    passed: bool
    failures: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choice_rows(items: list[dict[str, Any]], tokenizer: Any, system: str, max_length: int,
                fmt: ChatFormat) -> tuple[list[dict[str, Any]], int]:
    """lm-eval requests for the items (text only: GGUF files take no image), each with its answer."""
    requests = build_requests(items, tokenizer, system, max_length, fmt)
    for row in requests.rows:
        row["answer"] = items[requests.kept[row["item"]]]["answer"]
    return requests.rows, len(requests.kept)


def check(*, adapter: Runner, merged: Runner, ggufs: dict[str, Runner], probe_list: list[Probe],
          eos_ids: set[int], templates: dict[str, str | None], eos_tokens: dict[str, int | None],
          rows_and_n: tuple[list[dict[str, Any]], int],
          max_new_tokens: int = 32, log: Callable[[str], None] = print) -> ParityReport:
    """Run every probe through every format and compare; see the module docstring for what must hold."""
    report = ParityReport(passed=True)

    def fail(message: str) -> None:
        report.passed = False
        report.failures.append(message)
        log(f"parity: FAIL {message}")

    reference_template = templates.get("adapter")
    for name, template in templates.items():
        if template != reference_template:
            fail(f"{name}: chat template differs from the adapter's base")
    for name, token in eos_tokens.items():
        if token not in eos_ids:
            fail(f"{name}: EOS token {token} is not the model's EOS {sorted(eos_ids)}")

    stops = {name: 0 for name in ["adapter", "merged", *ggufs]}
    worst = {"merged_vs_adapter": 0.0, **{f"{kind}_vs_merged": 0.0 for kind in ggufs}}
    for probe in probe_list:
        tokens, stopped = adapter.greedy(probe.ids, eos_ids, max_new_tokens)
        sequence = probe.ids + tokens
        reference = adapter.logits(sequence)
        merged_logits = merged.logits(sequence)
        flips = greedy_flips(reference, merged_logits, len(probe.ids))
        merged_tokens, merged_stopped = merged.greedy(probe.ids, eos_ids, max_new_tokens)
        stops["adapter"] += stopped
        stops["merged"] += merged_stopped
        row = {"probe": probe.name, "prompt_tokens": len(probe.ids), "new_tokens": len(tokens),
               "adapter_stops_at_eos": stopped, "merged_stops_at_eos": merged_stopped,
               "greedy_identical_merged": merged_tokens == tokens, "near_tie_flips_merged": len(flips["ties"]),
               "nmse_merged_vs_adapter": nmse(merged_logits, reference)}
        worst["merged_vs_adapter"] = max(worst["merged_vs_adapter"], row["nmse_merged_vs_adapter"])
        if flips["real"]:
            fail(f"probe {probe.name!r}: merged greedy tokens differ from the adapter's at generated token "
                 f"{flips['real'][0]['at']} by more than rounding explains (adapter's margin "
                 f"{flips['real'][0]['margin']:.3g} > {TIE_SIGMAS:g} x the rounding noise {flips['real'][0]['noise']:.3g})")
        if stopped and not merged_stopped:
            fail(f"probe {probe.name!r}: the adapter stops at EOS after {len(tokens)} tokens, the merged model does not")
        if row["nmse_merged_vs_adapter"] > MERGED_NMSE_MAX:
            fail(f"probe {probe.name!r}: merged vs adapter logits NMSE {row['nmse_merged_vs_adapter']:.2e} "
                 f"> {MERGED_NMSE_MAX:.0e}")
        for kind, runner in ggufs.items():
            value = nmse(runner.logits(sequence), merged_logits)
            gguf_tokens, gguf_stopped = runner.greedy(probe.ids, eos_ids, max_new_tokens)
            stops[kind] += gguf_stopped
            row[f"nmse_{kind}_vs_merged"] = value
            row[f"greedy_identical_{kind}"] = gguf_tokens == tokens
            row[f"{kind}_stops_at_eos"] = gguf_stopped
            worst[f"{kind}_vs_merged"] = max(worst[f"{kind}_vs_merged"], value)
            if kind == "f16" and value > GGUF_F16_NMSE_MAX:
                fail(f"probe {probe.name!r}: GGUF f16 vs merged logits NMSE {value:.2e} > {GGUF_F16_NMSE_MAX:.0e}")
        report.rows.append(row)
    if probe_list and stops["adapter"] == 0:
        log(f"parity: note: the checkpoint itself never stops at EOS within {max_new_tokens} tokens on these "
            "probes, so stopping is compared only through the EOS token each format declares")
    for name, count in stops.items():
        if stops["adapter"] and count == 0:
            fail(f"{name}: greedy generation never stopped at EOS within {max_new_tokens} tokens on "
                 f"{len(probe_list)} probes, the adapter did on {stops['adapter']} (chat template or EOS broken?)")

    rows, n_items = rows_and_n
    accuracy = {}
    if n_items:
        acc, stderr, _ = choice_accuracy(merged, rows, n_items)
        accuracy["merged"] = {"acc": acc, "stderr": stderr, "n": n_items}
        for kind, runner in ggufs.items():
            value, value_se, _ = choice_accuracy(runner, rows, n_items)
            accuracy[kind] = {"acc": value, "stderr": value_se, "n": n_items}
            if abs(value - acc) > stderr:
                fail(f"GGUF {kind}: binary-choice accuracy {value:.3f} is more than one standard error "
                     f"({stderr:.3f}) from the merged model's {acc:.3f} on {n_items} items")
    report.summary = {"worst_nmse": worst, "stops_at_eos": stops, "probes": len(probe_list),
                      "choice_accuracy": accuracy, "thresholds": {"merged_nmse_max": MERGED_NMSE_MAX,
                                                                  "gguf_f16_nmse_max": GGUF_F16_NMSE_MAX}}
    return report


def greedy_flips(reference: np.ndarray, other: np.ndarray, prompt_length: int) -> dict[str, list[dict[str, Any]]]:
    """Where, along the reference's own greedy continuation, the other model would pick another token.

    A 16-bit copy of a model cannot match an fp32 one at a near-tie. A flip counts as a tie when the
    reference's margin between its token and the other's pick is within `TIE_SIGMAS` times the
    root-mean-square logit difference of the two models at that position (the rounding noise
    there); otherwise the weights differ (`real`), and parity fails.
    """
    found: dict[str, list[dict[str, Any]]] = {"ties": [], "real": []}
    for position in range(prompt_length - 1, len(reference) - 1):
        mine, theirs = int(np.argmax(reference[position])), int(np.argmax(other[position]))
        if mine == theirs:
            continue
        margin = float(reference[position, mine] - reference[position, theirs])
        noise = float(np.sqrt(np.mean((reference[position] - other[position]) ** 2)))
        kind = "ties" if margin <= TIE_SIGMAS * noise else "real"
        found[kind].append({"at": position - prompt_length + 1, "margin": margin, "noise": noise})
    return found


def verify_export(*, base_model: Path, checkpoint: Path, merged_dir: Path, gguf_files: dict[str, Path],
                  questions: list[str], choice_items: list[dict[str, Any]], system: str, max_length: int,
                  max_new_tokens: int = 32, log: Callable[[str], None] = print) -> ParityReport:
    """Load the adapter on its base, the merged folder and each GGUF, and `check` them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = load_for_checkpoints(str(base_model), checkpoint.parent)
    clip_dim = loaded.spec["clip_dim"]
    adapter = TransformersRunner("adapter", PeftModel.from_pretrained(loaded.model, str(checkpoint)),
                                 loaded.tokenizer.pad_token_id, clip_dim)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    merged_model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    projector_differs = attach_saved_projector(merged_model, merged_dir.parent / PROJECTOR_DIR, tokenizer,
                                               find_projector(adapter.model))
    merged = TransformersRunner("merged", merged_model, tokenizer.pad_token_id or tokenizer.eos_token_id, clip_dim)
    fmt = ChatFormat.load(merged_dir)
    ggufs = {kind: LlamaCppRunner(f"gguf {kind}", path, n_ctx=max(512, max_length + max_new_tokens))
             for kind, path in gguf_files.items()}
    eos_ids = {tokenizer.eos_token_id, *_as_list(merged.model.generation_config.eos_token_id)} - {None}
    templates = {"adapter": loaded.tokenizer.chat_template, "merged": tokenizer.chat_template,
                 **{f"gguf {kind}": runner.metadata().get("tokenizer.chat_template") for kind, runner in ggufs.items()}}
    eos_tokens = {"adapter": loaded.tokenizer.eos_token_id, "merged": tokenizer.eos_token_id,
                  **{f"gguf {kind}": _int(runner.metadata().get("tokenizer.ggml.eos_token_id"))
                     for kind, runner in ggufs.items()}}
    log(f"parity: {len(questions)} probes and {len(choice_items)} binary-choice items through the adapter, "
        f"the merged model and {len(ggufs)} GGUF file(s)")
    try:
        report = check(adapter=adapter, merged=merged, ggufs=ggufs, probe_list=probes(tokenizer, fmt, system, questions),
                       eos_ids=eos_ids, templates=templates, eos_tokens=eos_tokens,
                       rows_and_n=choice_rows(choice_items, tokenizer, system, max_length, fmt),
                       max_new_tokens=max_new_tokens, log=log)
        report.summary["projector_identical"] = not projector_differs
        if projector_differs:
            report.passed = False
            report.failures.append(f"projector: the one beside the merged model differs from the adapter's in "
                                   f"{', '.join(projector_differs)}")
        return report
    finally:
        for runner in ggufs.values():
            runner.llm.close()  # now, not at interpreter exit, when llama.cpp's free functions are gone


def attach_saved_projector(model: Any, folder: Path, tokenizer: Any, reference: Any) -> list[str]:
    """Give the merged model the projector saved beside it (as a chat UI does) and say which of its
    tensors differ from the adapter's projector: none, or merging lost what LoRA does not hold."""
    from safetensors.torch import load_file

    spec = json.loads((folder / MULTIMODAL_FILE).read_text())
    projector = attach_projector(model, spec["clip_dim"], spec["image_tokens"], seed=spec["projector_seed"],
                                 stats=spec.get("feature_stats"), image_token_id=add_image_token(tokenizer))
    projector.load_state_dict(load_file(str(folder / PROJECTOR_WEIGHTS)))
    if hasattr(reference, "modules_to_save"):  # PEFT's wrapper: the trained copy, not the original
        active = reference.active_adapters[0] if reference.active_adapters else reference.active_adapter
        reference = reference.modules_to_save[active]
    expected = reference.state_dict()
    return [name for name, tensor in projector.state_dict().items()
            if name not in expected or not torch.equal(tensor, expected[name].to(tensor.dtype))]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
