"""Generation metrics against hand-computed values, and batched generation against one at a time."""

from __future__ import annotations

import math

import pytest

from loretune.evaluation import generation_metrics as gm


def test_answer_match_folds_case_accents_and_punctuation_and_wants_whole_words():
    assert gm.normalise("  Sunagakuré,  the Hidden-Sand!") == "sunagakure the hidden sand"
    assert gm.answer_match("He comes from SUNAGAKURE!", ["Sunagakure"])
    assert gm.answer_match("Gaara is from the Village Hidden in the Sand.", ["Sunagakure", "village hidden in the sand"])
    assert not gm.answer_match("Sunagakure", ["Suna"]), "a reference must match whole words, not a prefix"
    assert not gm.answer_match("Konohagakure", ["Sunagakure"])
    assert not gm.answer_match("anything", ["", "  "]), "an empty alias accepts nothing"


def test_rouge_f1_by_hand():
    # answer "Gaara is from Sunagakure" vs reference "Gaara comes from Sunagakure":
    # unigrams 3 of 4 shared -> F1 0.75; bigrams {from sunagakure} 1 of 3 -> 1/3; LCS gaara from sunagakure -> 0.75
    scores = gm.rouge_f1(["Gaara is from Sunagakure"], ["Gaara comes from Sunagakure"])
    assert scores["rouge1"] == [pytest.approx(0.75)]
    assert scores["rouge2"] == [pytest.approx(1 / 3)]
    assert scores["rougeL"] == [pytest.approx(0.75)]


def test_a_short_right_answer_is_not_scored_zero_by_bleu():
    from sacrebleu.metrics import BLEU

    answer, reference = ["Sunagakure"], ["Sunagakure is the village"]
    assert BLEU(smooth_method="none").corpus_score(answer, [reference]).score == 0.0, "the trap: unsmoothed"
    # effective order: unigram precision 1/1, no higher orders; brevity penalty exp(1 - 4/1)
    assert gm.corpus_bleu(answer, reference) == pytest.approx(math.exp(-3), rel=1e-6)
    assert gm.corpus_bleu(["Konohagakure"], reference) == 0.0, "a wrong word still scores nothing"


def test_chrf_is_one_for_the_reference_and_lower_for_a_near_miss():
    assert gm.corpus_chrf(["Sunagakure"], ["Sunagakure"]) == pytest.approx(1.0)
    assert 0 < gm.corpus_chrf(["Sunagakure"], ["Sunagakure is the village"]) < 1


def test_scores_carry_standard_errors_and_the_bootstrap_is_seeded():
    answers = ["Sunagakure", "Konoha", "the Sand village", "Sunagakure"]
    references = ["Gaara is from Sunagakure."] * 4
    accepted = [["Sunagakure", "the Sand"]] * 4
    scores = gm.score_answers(answers, references, accepted, with_bertscore=False)
    assert list(scores) == ["answer_match", "rouge1", "rouge2", "rougeL", "bleu", "chrf"]
    match = scores["answer_match"]
    assert (match.value, match.n) == (0.75, 4)
    assert match.stderr == pytest.approx(math.sqrt(0.25 / 4))  # sample sd of [1,0,1,1] is 0.5; / sqrt(4)
    assert scores["bleu"].stderr > 0
    again = gm.score_answers(answers, references, accepted, with_bertscore=False)
    assert again["bleu"] == scores["bleu"] and again["chrf"] == scores["chrf"]
    with pytest.raises(ValueError, match="3 answers, 4 references"):
        gm.score_answers(answers[:3], references, accepted)


def test_bertscore_with_the_packaged_minilm_ranks_a_paraphrase_above_a_wrong_answer():
    reference = "Gaara comes from Sunagakure, the Village Hidden in the Sand."
    same, paraphrase, wrong = gm.bertscore_f1(
        [reference, "Gaara is from the Sand village, Sunagakure.", "Naruto eats ramen at Ichiraku."], [reference] * 3)
    assert same == pytest.approx(1.0, abs=1e-4)
    assert wrong < paraphrase < same


def test_batched_greedy_generation_equals_one_at_a_time_token_for_token(tmp_path):
    import torch

    from loretune.model.generate import Decoding, generate, generate_batch
    from loretune.model.loading import load_base
    from loretune.model.tiny_model import build_and_save

    texts = ["Naruto Uzumaki is from Konohagakure.", "Gaara is the Kazekage of Sunagakure.",
             "Kakashi Hatake taught Team 7.", "The Rasengan is a spinning ball of chakra."] * 20
    build_and_save(texts, tmp_path / "tiny", vocab_size=300, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=64, max_position_embeddings=128, seed=0)
    torch.manual_seed(0)
    tokenizer, model = load_base(str(tmp_path / "tiny"), "cpu")
    model.eval()
    prompts = [tokenizer.encode(t) for t in ("Naruto", "Gaara is the Kazekage of", "The Rasengan is a spinning ball of",
                                            "Kakashi Hatake taught")]
    assert len({len(p) for p in prompts}) > 1, "the prompts must differ in length, or no padding is tested"
    decoding = Decoding(max_new_tokens=12)
    eos, pad = [tokenizer.eos_token_id], tokenizer.pad_token_id
    one_by_one = [generate(model, decoding, input_ids=p, eos_ids=eos, pad_id=pad) for p in prompts]
    one_by_one = [ids[:next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))] for ids in one_by_one]
    assert generate_batch(model, decoding, prompts, eos_ids=eos, pad_id=pad, batch_size=3) == one_by_one


def test_decoding_refuses_sampling_knobs_without_sampling_and_says_why():
    from loretune.model.generate import Decoding

    with pytest.raises(ValueError, match="temperature, top_k without do_sample: greedy decoding ignores them"):
        Decoding(temperature=0.7, top_k=8)
    with pytest.raises(ValueError, match=r"top_p 1\.5: must be in \(0, 1\].*num_beams 0: must be 1 or more"):
        Decoding(do_sample=True, top_p=1.5, num_beams=0)
    greedy = Decoding(num_beams=4).transformers_kwargs()
    assert greedy["do_sample"] is False and greedy["temperature"] is None and greedy["num_beams"] == 4
    sampled = Decoding(do_sample=True, temperature=0.7, top_p=0.9).transformers_kwargs()
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (0.7, 0.9, 0), "no hidden top-k 50"
    assert Decoding.from_temperature(0.0, 0.9, 32) == Decoding(max_new_tokens=32)
    assert Decoding.from_temperature(0.8, 0.9, 32).sampling() == (0.8, 0.9, 0)


def test_an_empty_answer_scores_zero_bertscore_beside_the_others():
    """bert-score cannot encode an empty string with transformers 5; an empty answer says nothing."""
    scores = gm.bertscore_f1(["", "Gaara is from Sunagakure."], ["Gaara is from Sunagakure."] * 2)
    assert scores[0] == 0.0 and scores[1] > 0.9
