"""Scoring: lm-evaluation-harness semantics, checked against lm-eval itself, and the promotion gate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from loretune import stats
from loretune.evaluation import binary_choice, promotion
from loretune.model import scoring
from loretune.model.collator import FusionCollator
from loretune.model.loading import load_base
from loretune.model.tiny_model import build_and_save
from loretune.multimodal.fusion import ImageProjector, attach_projector

SYSTEM = "You are an expert on the lore."
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            max_position_embeddings=256, seed=0)
NAMES = ["Konohagakure", "Sunagakure", "Kirigakure", "Iwagakure", "Uzumaki", "Uchiha", "Hyuga", "Nara",
         "Fire Release", "Wind Release", "Water Release", "Earth Release", "Team 7", "Team Guy", "Sannin", "Jonin"]


def items(n: int = 40) -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        right, wrong = rng.choice(NAMES, size=2, replace=False)
        answer = i % 2
        choices = [str(right), str(wrong)] if answer == 0 else [str(wrong), str(right)]
        out.append({"question": f"Which village or clan goes with person number {i}?", "choices": choices,
                    "answer": answer})
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    texts = [f"{a} and {b} are in the lore. Which village or clan goes with person number {i}?"
             for i, (a, b) in enumerate(zip(NAMES, NAMES[1:] + NAMES[:1]))] * 30
    build_and_save(texts, folder, vocab_size=400, **TINY)
    return folder


def loretune_scores(base, questions, max_length=128) -> tuple[binary_choice.SetScores, binary_choice.Requests]:
    tokenizer, model = load_base(str(base), "cpu")
    attach_projector(model, clip_dim=8, n_tokens=2, seed=0)
    requests = binary_choice.build_requests(questions, tokenizer, SYSTEM, max_length)
    collator = FusionCollator(tokenizer.pad_token_id, {}, 8)
    return binary_choice.score_sets(model.eval(), {"check": requests}, {"check": questions}, collator, 7, "cpu")["check"], requests


def test_context_and_continuation_split_as_lm_eval_does(base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    context = binary_choice.chat_context(tokenizer, SYSTEM, "Which clan?")
    assert context.endswith("<|assistant|>\n")
    context_ids, continuation = binary_choice.encode_pair(tokenizer, context, "Uzumaki")
    # The context's trailing newline moves onto the continuation, as lm-eval's _encode_pair does.
    assert tokenizer.decode(continuation) == "\nUzumaki"
    assert context_ids + continuation == tokenizer.encode(context + "Uzumaki", add_special_tokens=False)


def test_acc_and_acc_norm_agree_with_lm_evaluation_harness(base, tmp_path):
    """lm-eval's own HFLM on the same local model folder, through a local task definition."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    questions = items()
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (tmp_path / "loretune_check.yaml").write_text("\n".join([
        "task: loretune_check",
        "dataset_path: json",
        f"dataset_kwargs: {{data_files: {{test: '{tmp_path / 'data.jsonl'}'}}, cache_dir: '{tmp_path / 'hf-cache'}'}}",
        "test_split: test",
        "output_type: multiple_choice",
        "doc_to_text: question",
        "doc_to_choice: choices",
        "doc_to_target: answer",
        "metric_list: [{metric: acc}, {metric: acc_norm}]",
    ]))
    lm = HFLM(pretrained=str(base), dtype="float32", device="cpu", batch_size=5)
    results = simple_evaluate(model=lm, tasks=["loretune_check"], task_manager=TaskManager(include_path=str(tmp_path)),
                              apply_chat_template=True, system_instruction=SYSTEM, log_samples=True,
                              bootstrap_iters=0)
    theirs = results["results"]["loretune_check"]
    ours, _ = loretune_scores(base, questions)
    assert ours.n == len(questions) and ours.dropped == 0
    assert theirs["acc,none"] == float(ours.correct.mean())
    assert theirs["acc_norm,none"] == float(ours.correct_norm.mean())
    samples = sorted(results["samples"]["loretune_check"], key=lambda s: s["doc_id"])
    assert [s["acc"] for s in samples] == ours.correct.astype(float).tolist(), "item by item, not only on average"
    assert [s["acc_norm"] for s in samples] == ours.correct_norm.astype(float).tolist()
    assert ours.correct.tolist() != ours.correct_norm.tolist(), "the items must tell acc from acc_norm"
    their_lls = [[r[0] for r in s["filtered_resps"]] for s in samples]
    np.testing.assert_allclose(np.array(their_lls), np.array(ours.loglikelihoods), rtol=0, atol=1e-4)


def test_an_item_that_does_not_fit_is_dropped_and_counted_not_scored(base):
    questions = items(6)
    questions[2] = {**questions[2], "choices": [questions[2]["choices"][0], "Konohagakure " * 60]}
    scores, requests = loretune_scores(base, questions, max_length=64)
    assert scores.dropped == 1 and scores.n == 5
    assert 2 not in requests.kept and len(requests.rows) == 10


def test_scoring_gathers_only_labelled_positions():
    """The model projects to the vocabulary only at positions that predict a labelled token, and the
    log-softmax runs over labelled tokens only: memory ~ tokens x vocab, not batch x length x vocab."""
    seen, kept = [], []

    class Logits(torch.nn.Module):  # a stand-in LM that records what log_softmax would see
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(50, 4)
            self.image_projector = ImageProjector(8, 4, 1, image_token_id=49)

        def get_input_embeddings(self):
            return self.embed

        def forward(self, inputs_embeds, attention_mask, logits_to_keep):
            kept.append(logits_to_keep.tolist())
            logits = torch.randn(*inputs_embeds.shape[:2], 50)[:, logits_to_keep]
            seen.append(logits.shape)
            return type("Out", (), {"logits": logits})()

    real = torch.log_softmax
    shapes = []
    torch.log_softmax = lambda x, dim: (shapes.append(tuple(x.shape)), real(x, dim=dim))[1]
    try:
        rows = [{"input_ids": list(range(1, 30)), "labels": [-100] * 27 + [5, 6], "image_sha256": ""},
                {"input_ids": list(range(1, 10)), "labels": [-100] * 8 + [7], "image_sha256": ""}]
        lls = scoring.loglikelihoods(Logits(), rows, FusionCollator(0, {}, 8), batch_size=2, device="cpu")
    finally:
        torch.log_softmax = real
    assert kept == [[7, 26, 27]], "row 2 (right-padded) labels position 8, row 1 positions 27 and 28"
    assert seen == [(2, 3, 50)] and shapes == [(3, 50)]
    assert lls.shape == (2,) and np.all(lls < 0)


def row(step, acc, se, delta, low, high, n=200, set_name="facts"):
    return {"step": step, "checkpoint": "base" if step == 0 else f"checkpoint-{step}", "set": set_name, "n": n,
            "acc": acc, "acc_stderr": se, "delta_acc": delta, "delta_acc_ci_low": low, "delta_acc_ci_high": high}


BASELINES = {"facts": {"always_first": {"value": 0.5, "stderr": 0.035}, "more_common": {"value": 0.51, "stderr": 0.03},
                       "shorter": {"value": 0.49, "stderr": 0.03}}}


def test_gate_promotes_the_earliest_checkpoint_within_one_standard_error_of_the_best():
    table = [row(0, 0.52, 0.035, 0, 0, 0), row(120, 0.70, 0.032, 0.18, 0.10, 0.26),
             row(240, 0.72, 0.032, 0.20, 0.12, 0.28), row(360, 0.69, 0.033, 0.17, 0.09, 0.25)]
    decision = promotion.promote(table, BASELINES, "facts", "acc")
    assert decision["promoted"] == "checkpoint-120" and decision["step"] == 120
    assert "checkpoint-240" in decision["reason"], "the reason names the best it was measured against"


def test_gate_promotes_nothing_when_the_gain_is_inside_the_noise():
    table = [row(0, 0.52, 0.035, 0, 0, 0), row(120, 0.55, 0.035, 0.03, -0.02, 0.08)]
    decision = promotion.promote(table, BASELINES, "facts", "acc")
    assert decision["promoted"] is None
    assert decision["reason"].startswith("no checkpoint beats the base") and "[-0.020, +0.080]" in decision["reason"]


def test_gate_wants_more_than_the_no_knowledge_baseline():
    strong_baseline = {"facts": {**BASELINES["facts"], "more_common": {"value": 0.68, "stderr": 0.03}}}
    table = [row(0, 0.40, 0.035, 0, 0, 0), row(120, 0.70, 0.032, 0.30, 0.22, 0.38)]
    decision = promotion.promote(table, strong_baseline, "facts", "acc")
    assert decision["promoted"] is None and "more_common baseline is 0.680" in decision["reason"]


def test_gate_names_a_set_that_was_not_evaluated():
    decision = promotion.promote([row(0, 0.5, 0.03, 0, 0, 0)], BASELINES, "lore_quiz", "acc")
    assert decision["promoted"] is None and "'lore_quiz' was not evaluated (evaluated: facts)" in decision["reason"]


def test_paired_statistics():
    after = [1] * 60 + [0] * 40
    before = [1] * 40 + [0] * 60
    delta, low, high = stats.paired_difference(after, before)
    assert delta == pytest.approx(0.2) and low > 0 and high < 0.4
    assert stats.mcnemar_p(after, before) == pytest.approx(2 * 0.5 ** 20)  # 20 gained, 0 lost
    assert stats.mcnemar_p(before, before) == 1.0
    assert stats.mean_stderr([1, 0] * 50) == pytest.approx(math.sqrt(0.25 / 99))
