"""The retention share: the base's own answers to general questions, generated once, mixed in."""

from __future__ import annotations

import pytest

from loretune.model.answer_cache import AnswerCache
from loretune.model.chat_format import ChatFormat
from loretune.model.tiny_model import build_and_save
from loretune.training import retention

TINY = dict(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=256, seed=0)


def test_examples_cycle_through_the_answers_in_whole_sentences():
    answers = [{"question": "A?", "answer": "Yes.", "stopped": True},
               {"question": "B?", "answer": "cut off mid", "stopped": False},
               {"question": "C?", "answer": "It is 3.5 kg. Then it was cut at the lim", "stopped": False},
               {"question": "D?", "answer": "No.", "stopped": True}]
    made = retention.retention_examples(answers, "Sys.", 5)
    assert [m[1]["content"] for m in made] == ["A?", "C?", "D?", "A?", "C?"], "no whole sentence in B: left out"
    assert made[1] == [{"role": "system", "content": "Sys."}, {"role": "user", "content": "C?"},
                       {"role": "assistant", "content": "It is 3.5 kg."}]
    assert retention.retention_examples(answers[1:2], "Sys.", 5) == [], "no whole sentence: nothing to retain"
    assert retention.retention_examples(answers, "Sys.", 0) == []


def test_the_base_is_asked_once_and_answered_from_the_cache_after(tmp_path, monkeypatch):
    build_and_save(list(retention.GENERAL_QUESTIONS) * 5, tmp_path / "base", **TINY)
    cache = AnswerCache(tmp_path / "cache")
    ask = dict(base_model=str(tmp_path / "base"), model_key="base-v1", system="Sys.", cache=cache, fmt=ChatFormat(),
               questions=retention.GENERAL_QUESTIONS[:4], log=lambda m: None)
    first = retention.base_answers(**ask)
    assert [a["question"] for a in first] == list(retention.GENERAL_QUESTIONS[:4])
    assert all(set(a) == {"question", "answer", "tokens", "stopped"} for a in first)

    def no_model(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(retention, "load_base", no_model)
    assert retention.base_answers(**ask) == first
    with pytest.raises(AssertionError, match="the cache should have answered"):
        retention.base_answers(**{**ask, "model_key": "base-v2"})  # other weights: asked again
