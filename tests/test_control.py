"""The control that shows the evaluation measures page-specific knowledge.

Two tiny models train on the same pages, one on the true facts and one on the facts permuted
across pages (same values, as often, as long; none on its own page). On the true `facts` set the
first must beat chance beyond its 95% interval and the second must not: if the second did, the set
would be rewarding something other than knowing whose fact it is.
"""

from __future__ import annotations

import numpy as np
import pytest

from loretune.config import LoraConfig, TrainingConfig
from loretune.dataset import assemble as ds
from loretune.dataset import evalsets, layout
from loretune.evaluation.binary_choice import evaluate_checkpoints
from loretune.model.tiny_model import build_and_save
from loretune.stats import Z95
from loretune.training.recipe import Recipe
from loretune.training.sft import train

SYSTEM = "You are an expert."
FIRST = ["Ayo", "Bex", "Cal", "Dov", "Eli", "Fen", "Gus", "Hal", "Ivo", "Jax", "Kip", "Lev", "Mox", "Ned", "Oto",
         "Pim", "Quin", "Rex", "Sol", "Tam", "Uri", "Vik", "Wes", "Yul"]
CLANS = ["Uzumaki", "Uchiha", "Hyuga", "Nara", "Akimichi", "Yamanaka"]
RANKS = ["Genin", "Chunin", "Jonin", "Kage", "Sannin"]
VILLAGES = ["Konohagakure", "Sunagakure", "Kirigakure", "Iwagakure", "Kumogakure"]
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            max_position_embeddings=256, seed=0)


def lore() -> list[ds.LorePage]:
    rng = np.random.default_rng(7)
    out = []
    for i, name in enumerate(FIRST):
        facts = {"clan": [str(rng.choice(CLANS))], "rank": [str(rng.choice(RANKS))],
                 "village": [str(rng.choice(VILLAGES))]}
        text = f"{name} belongs to the {facts['clan'][0]} clan, holds the rank of {facts['rank'][0]} and lives in {facts['village'][0]}."
        out.append(ds.LorePage(doc_id=f"fandom:{i}", title=name, text=text, facts=facts, image=None, kind="character"))
    return out


def facts_accuracy(tmp_path, control: str) -> dict:
    data = tmp_path / control
    data.mkdir()
    ds.build_dataset(lore(), data, domain="test", system_prompt=SYSTEM, max_answer_chars=200, val_fraction=0.0,
                     seed=0, near_duplicate_threshold=0.8, control=control)
    build_and_save(layout.corpus_texts(data) * 3, tmp_path / f"base-{control}",
                   vocab_size=400, **TINY)
    # The default recipe for a random-weight model: embeddings and output layer train with LoRA.
    cfg = Recipe.from_dict(TrainingConfig(max_steps=480, save_steps=480, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                         max_length=192, lora=LoraConfig(modules_to_save=["embed_tokens", "lm_head"])).model_dump())
    checkpoints = train(dataset_dir=data, features={}, clip_dim=8, base_model=str(tmp_path / f"base-{control}"),
                        output_dir=tmp_path / f"ckpt-{control}", cfg=cfg, image_tokens=2, log=lambda m: None)
    # Both models answer the true run's questions: a set's distractors are balanced on its own
    # training text, which the permuted run does not share (no prose), so its own set differs.
    facts = evalsets.read_set(tmp_path / "none" / "eval" / "facts.jsonl")
    result = evaluate_checkpoints(base_model=str(tmp_path / f"base-{control}"), checkpoints=checkpoints,
                                  sets={"facts": facts}, system=SYSTEM, features={}, batch_size=32, max_length=64,
                                  log=lambda m: None)
    return result.table[-1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("control")


def test_permuted_facts_score_chance_where_true_facts_do_not(workdir):
    true = facts_accuracy(workdir, "none")
    permuted = facts_accuracy(workdir, "permuted_facts")
    assert true["n"] == permuted["n"] >= 50, "both models answer the same true questions"
    assert true["acc"] - Z95 * true["acc_stderr"] > 0.5, f"true facts must be learnt: {true}"
    assert permuted["acc"] - Z95 * permuted["acc_stderr"] <= 0.5, f"permuted facts must not beat chance: {permuted}"
