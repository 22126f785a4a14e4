"""The retention share: the base model's own answers to general questions, mixed into training.

Why: fine-tuning on the lore alone pulls every answer towards the lore's style (a model taught
bare values answered everything with a lore noun). Training also on what the base itself says to
ordinary questions, under the same system prompt, anchors the rest of its behaviour where it was
(self-distillation: no outside data, no outside model, nothing to license). The answers are
generated once per base model, greedy, and cached by content (`model/answer_cache.py`). An answer
cut at the token limit is kept up to its last whole sentence (SmolLM2 ends 11 of 40 within 160
tokens: the others would leave the share a handful of answers repeated many times), so a short
limit loses little and costs less: 96 new tokens.

`GENERAL_QUESTIONS` are loretune's own, written for this: everyday explanations, advice, writing,
arithmetic and definitions, nothing about any fandom.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Callable, Sequence

from loretune.model.answer_cache import AnswerCache
from loretune.model.chat_format import ChatFormat
from loretune.model.generate import Decoding, answer_questions
from loretune.model.loading import autocast, default_device, load_base

GENERAL_QUESTIONS = (
    "Why do leaves change colour in autumn?",
    "How does a refrigerator keep food cold?",
    "Give me three tips for sleeping better.",
    "What is the difference between weather and climate?",
    "Write a short thank-you note to a neighbour who watered my plants.",
    "How many minutes are there in a week?",
    "Explain what a prime number is.",
    "What should I pack for a day of hiking?",
    "Why does bread go stale?",
    "Suggest a name for a small bakery.",
    "How do I politely decline an invitation?",
    "What does a thermometer measure?",
    "Summarise why people keep a budget.",
    "If a train travels 60 kilometres in 45 minutes, what is its speed in kilometres per hour?",
    "What is photosynthesis?",
    "Give me an idea for a quick vegetarian dinner.",
    "How can I remember new vocabulary in a foreign language?",
    "What is the boiling point of water at sea level?",
    "Write a haiku about the sea.",
    "Why is it important to wash your hands?",
    "Explain what an email subject line is for.",
    "What are the primary colours of light?",
    "How do I start learning to play the guitar?",
    "What causes the seasons on Earth?",
    "Describe a sunset in two sentences.",
    "What is a good way to prepare for a job interview?",
    "How does a bicycle stay upright when it moves?",
    "Convert 3.5 kilograms to grams.",
    "What is the purpose of a library?",
    "Give a friendly reminder that a meeting starts at ten.",
    "Why do we have leap years?",
    "What is the difference between a lake and a pond?",
    "How can I make a small apartment feel larger?",
    "Explain in simple words what a computer program is.",
    "What are two benefits of walking every day?",
    "Tell me a fun fact about octopuses.",
    "How do you calculate the average of a list of numbers?",
    "What should I do if I feel stressed before an exam?",
    "Why does ice float on water?",
    "Write one sentence encouraging a friend who is learning to swim.",
)
MAX_NEW_TOKENS = 96
CODE_VERSION = "retention/1"


def base_answers(*, base_model: str, model_key: str, system: str, cache: AnswerCache, fmt: ChatFormat,
                 attn_implementation: str = "sdpa", precision: str = "fp32", batch_size: int = 20,
                 questions: Sequence[str] = GENERAL_QUESTIONS,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The base model's greedy answer to each question under `system`, from the cache when the
    same weights (`model_key`) were asked before."""
    decoding = Decoding(max_new_tokens=MAX_NEW_TOKENS)
    key = cache.key(model=model_key, questions=hashlib.sha256(json.dumps(list(questions)).encode()).hexdigest(),
                    system=system, decoding=decoding.__dict__, batch_size=batch_size, code=CODE_VERSION,
                    precision=precision)
    answers = cache.get(key)
    if answers is not None and len(answers) == len(questions):
        log(f"retention: {len(answers)} base answers from the cache")
        return answers
    device = default_device()
    tokenizer, model = load_base(base_model, device, attn_implementation)
    model.eval()
    with autocast(device, precision):
        answers = answer_questions(model, tokenizer, fmt, questions, system, decoding, batch_size)
    answers = [{"question": q, **a} for q, a in zip(questions, answers)]
    cache.put(key, answers)
    log(f"retention: the base answered {len(answers)} general questions "
        f"({sum(a['stopped'] for a in answers)} ended by themselves)")
    return answers


def whole_sentences(answer: dict[str, Any]) -> str:
    """The answer as the base said it if it ended by itself, else up to its last whole sentence
    (nothing if it has none)."""
    text = answer["answer"].strip()
    if answer["stopped"]:
        return text
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
    return text[:ends[-1]] if ends else ""


def retention_examples(answers: Sequence[dict[str, Any]], system: str, count: int) -> list[list[dict[str, str]]]:
    """`count` conversations (system, question, the base's answer in whole sentences), cycling
    through the answers in their order: deterministic for the same answers."""
    usable = [(a["question"], said) for a in answers if (said := whole_sentences(a))]
    if not usable or count <= 0:
        return []
    return [[*([{"role": "system", "content": system}] if system else []),
             {"role": "user", "content": usable[i % len(usable)][0]},
             {"role": "assistant", "content": usable[i % len(usable)][1]}] for i in range(count)]
