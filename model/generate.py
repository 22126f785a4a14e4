"""Generation with transformers: one decoding-settings type and one `generate()` for every stage.

The before/after answers, the export's parity probes and the chat UI's transformers backend all
decode through here, so "greedy, 48 new tokens" means the same thing in each, and a decoding grid
(temperature, top-p, top-k, beams, seed) is a list of `Decoding` values.

Greedy decoding ignores temperature, top-p and top-k (transformers gives bit-identical output), so
`Decoding` refuses them without `do_sample` and hands transformers `None` for them when greedy,
rather than letting a sweep over them measure nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from loretune.model.chat_format import question_messages


@dataclass(frozen=True)
class Decoding:
    """How to choose each next token: greedy (or beam search) unless `do_sample`.

    temperature, top_p and top_k shape sampling only, and are refused without it: greedy ignores
    them, so a sweep over them would measure nothing. top_k 0 means no top-k cut (transformers'
    own default cuts at 50); unset sampling knobs mean temperature 1, top-p 1, no top-k."""

    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    num_beams: int = 1
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0  # sampling is reproducible for the same seed

    def __post_init__(self) -> None:
        problems = [f"{name} {value!r}: {rule}" for name, value, ok, rule in (
            ("temperature", self.temperature, self.temperature is None or self.temperature > 0, "must be above 0"),
            ("top_p", self.top_p, self.top_p is None or 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k, self.top_k is None or self.top_k >= 0, "must be 0 (no cut) or more"),
            ("num_beams", self.num_beams, self.num_beams >= 1, "must be 1 or more"),
            ("repetition_penalty", self.repetition_penalty, self.repetition_penalty > 0, "must be above 0"),
            ("max_new_tokens", self.max_new_tokens, self.max_new_tokens >= 1, "must be 1 or more"),
        ) if not ok]
        unused = [name for name in ("temperature", "top_p", "top_k") if getattr(self, name) is not None]
        if unused and not self.do_sample:
            problems.append(f"{', '.join(unused)} without do_sample: greedy decoding ignores them, so they would "
                            "measure nothing; set do_sample: true or leave them out")
        if problems:
            raise ValueError("decoding: " + "; ".join(problems))

    @classmethod
    def from_temperature(cls, temperature: float, top_p: float, max_new_tokens: int, seed: int = 0) -> Decoding:
        """A chat slider's settings: temperature 0 is greedy; above it, sampling with top-p alone
        (top_k 0), as llama.cpp is run by the chat UI."""
        if temperature <= 0:
            return cls(max_new_tokens=max_new_tokens, seed=seed)
        return cls(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
                   seed=seed)

    @property
    def greedy(self) -> bool:
        return not self.do_sample

    def sampling(self) -> tuple[float, float, int]:
        """temperature, top-p and top-k as sampling uses them (the unset ones at their neutral value)."""
        return (1.0 if self.temperature is None else self.temperature, 1.0 if self.top_p is None else self.top_p,
                0 if self.top_k is None else self.top_k)

    def transformers_kwargs(self) -> dict[str, Any]:
        """`model.generate` arguments; greedy hands transformers None for the sampling knobs."""
        common = {"num_beams": self.num_beams, "repetition_penalty": self.repetition_penalty,
                  "max_new_tokens": self.max_new_tokens}
        if self.greedy:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, **common}
        temperature, top_p, top_k = self.sampling()
        return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k, **common}


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end an answer: the model's generation config's end-of-generation ids (an
    end-of-turn token as well as end-of-text, for many chat models) and the tokenizer's EOS. The
    chat UI and the evaluation stop on the same set, so they never disagree on where an answer ends."""
    ids: set[int] = set()
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


@torch.no_grad()
def generate(model: Any, decoding: Decoding, *, eos_ids: Sequence[int], pad_id: int | None,
             input_ids: Sequence[int] | None = None, inputs: dict[str, torch.Tensor] | None = None,
             **extra: Any) -> list[int]:
    """The new token ids for one prompt (given as `input_ids`, or as ready `inputs` such as fused
    `inputs_embeds` with their attention mask), ending with the end-of-generation token if one was
    reached. `extra` goes to `model.generate` as is (a streamer, stopping criteria)."""
    if (input_ids is None) == (inputs is None):
        raise ValueError("generate: give the prompt as input_ids or as inputs, not both")
    if input_ids is not None:
        ids = torch.tensor([list(input_ids)], device=model.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if not decoding.greedy:
        torch.manual_seed(decoding.seed)
    out = model.generate(**inputs, **decoding.transformers_kwargs(), eos_token_id=sorted(eos_ids),
                         pad_token_id=pad_id, **extra)
    prompt_length = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0  # embeds: new tokens only
    return out[0, prompt_length:].tolist()


@torch.no_grad()
def generate_batch(model: Any, decoding: Decoding, prompts: Sequence[Sequence[int]], *, eos_ids: Sequence[int],
                   pad_id: int, batch_size: int = 8) -> list[list[int]]:
    """New token ids for each prompt, as `generate` gives them one at a time, computed a batch at a
    time: prompts are left-padded (a decoder continues from the last position, so padding must not
    sit between a prompt and its answer) with an attention mask, and each answer is cut after its
    first end-of-generation token and stripped of the padding that fills the batch after it.
    Sampling draws from one generator per batch, so sampled answers depend on the batching; greedy
    and beam answers do not."""
    eos = set(eos_ids)
    answers: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[start:start + batch_size]]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=model.device)
        if not decoding.greedy:
            torch.manual_seed(decoding.seed + start)
        out = model.generate(input_ids=ids, attention_mask=mask, **decoding.transformers_kwargs(),
                             eos_token_id=sorted(eos), pad_token_id=pad_id)
        for row in out[:, width:].tolist():
            end = next((i + 1 for i, token in enumerate(row) if token in eos), len(row))
            answers.append(row[:end])
    return answers


def answer_questions(model: Any, tokenizer: Any, fmt: Any, questions: Sequence[str], system: str,
                     decoding: Decoding, batch_size: int) -> list[dict[str, Any]]:
    """Per question, asked as every stage asks one (`question_messages`): the answer's text, its
    length in new tokens, and whether it ended at a stop token (not at `max_new_tokens`)."""
    eos = stop_ids(model, tokenizer)
    prompts = [fmt.ids(tokenizer, question_messages(system, question), add_generation_prompt=True)
               for question in questions]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    new = generate_batch(model, decoding, prompts, eos_ids=sorted(eos), pad_id=pad, batch_size=batch_size)
    return [{"answer": tokenizer.decode(tokens, skip_special_tokens=True).strip(), "tokens": len(tokens),
             "stopped": bool(tokens) and tokens[-1] in eos} for tokens in new]
