"""Facts taught many ways, in sentences, packed by page (`dataset/fact_renderings.py`)."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from loretune.dataset import assemble as ds
from loretune.dataset import fact_renderings as fr
from loretune.training.recipe import budget_steps

GAARA = ds.LorePage(doc_id="fandom:7", title="Gaara", kind="character", image=None,
                    text="Gaara was born in the desert village of Sunagakure. His teacher Baki trained him for years. "
                         "Before he was born, the beast Shukaku was sealed inside him by the elders.",
                    facts={"affiliation": ["Sunagakure"], "teacher": ["Baki"], "nature type": ["Wind Release",
                                                                                            "Earth Release"]})
TEMARI = ds.LorePage(doc_id="fandom:8", title="Temari", kind="character", image=None,
                     text="Temari is the elder sister of Gaara and fights with a giant fan.",
                     facts={"affiliation": ["Sunagakure"], "teacher": ["Rasa"], "nature type": ["Wind Release"]})
BAKI = ds.LorePage(doc_id="fandom:9", title="Baki", kind="character", image=None, text="",
                   facts={"affiliation": ["Sunagakure"]})
PAGES = [GAARA, TEMARI, BAKI]


def turns(page: ds.LorePage, exposures: int = 6, paragraphs: int = 2, seed: int = 0) -> list[fr.Turn]:
    return fr.fact_turns(page, fr.reversible(PAGES), exposures, paragraphs, random.Random(seed))


def test_every_fact_and_every_list_entry_is_stated_exactly_as_often():
    made = turns(GAARA)
    counts = fr.exposure_counts(key for t in made for key in t.facts)
    facts = fr.page_facts(GAARA)
    assert {f.key for f in facts} == set(counts)
    assert [f.values for f in facts if f.entry] == [("Wind Release",), ("Earth Release",)], "each entry its own fact"
    assert set(counts.values()) == {6 + 2}, counts


def test_answers_are_sentences_naming_the_subject_and_the_value():
    for turn in turns(GAARA):
        if turn.kind == "relation":
            continue
        assert turn.answer.endswith(".") and len(turn.answer.split()) >= 4, turn
        assert "Gaara" in turn.answer, turn
    whole = [t for t in turns(GAARA) if t.kind == "fact" and "teacher" in t.question]
    assert whole and all("Baki" in t.answer for t in whole)
    assert len({t.question for t in whole}) == len(whole), "no wording repeats before the pool is used up"


def test_only_a_value_one_subject_holds_is_asked_in_reverse():
    reversed_ = [t for t in turns(GAARA) if t.kind == "reversed"]
    assert reversed_ and all("Baki" in t.question or "Earth Release" in t.question for t in reversed_), \
        "Sunagakure (three subjects) and Wind Release (two) have no one answer"
    assert all("Gaara" in t.answer for t in reversed_)
    assert not any(t.kind == "reversed" and "Sunagakure" in t.question for t in turns(TEMARI))


def test_paragraphs_state_every_fact_in_a_shuffled_order():
    paragraphs = [t for t in turns(GAARA, paragraphs=6) if t.kind == "paragraph"]
    assert len(paragraphs) == 6
    for p in paragraphs:
        assert all(value in p.answer for value in ("Sunagakure", "Baki", "Wind Release", "Earth Release"))
    orders = {tuple(sorted(("Sunagakure", "Baki", "Wind Release"), key=p.answer.index)) for p in paragraphs}
    assert len(orders) > 1, "the facts come in more than one order"


def test_a_page_s_questions_are_packed_into_conversations_with_every_answer():
    made = turns(GAARA)
    packed = list(fr.conversations(made, per_example=4, rng=random.Random(0)))
    questions = [t for c in packed for t in c if t.kind != "paragraph"]
    assert sorted(map(id, questions)) == sorted(id(t) for t in made if t.kind != "paragraph")
    assert all(len(c) <= 4 for c in packed) and max(len(c) for c in packed) == 4


def test_prose_sentences_are_taught_as_answers_to_questions_about_the_names_they_mention():
    names = sorted(ds.evalsets.entity_kinds(PAGES), key=lambda n: (-len(n), n))
    made = fr.relation_turns(GAARA, names, exposures=2, rng=random.Random(0))
    by_name = Counter(t.facts[0].split("|")[1] for t in made)
    assert by_name == {"Sunagakure": 2, "Baki": 2}, by_name
    assert all(t.answer in GAARA.text and t.question.endswith(("?", ".")) for t in made)


def test_the_opening_sentence_is_taught_as_the_subject_s_introduction_asked_many_ways():
    made = fr.lead_turns(GAARA, 4, random.Random(0))
    assert [t.answer for t in made] == ["Gaara was born in the desert village of Sunagakure."] * 4
    assert len({t.question for t in made}) == 4 and all("Gaara" in t.question for t in made)
    assert fr.lead_turns(BAKI, 4, random.Random(0)) == [], "no prose, no introduction"
    no_name = ds.LorePage(doc_id="fandom:1", title="Gaara", kind="character", image=None, facts={},
                          text="He was born in the desert village of Sunagakure long ago.")
    assert fr.lead_turns(no_name, 4, random.Random(0)) == [], "a lead that does not name its subject teaches nothing"


def test_the_dataset_is_deterministic_and_reports_exposures_per_kind(tmp_path):
    def build(out):
        return ds.build_dataset(PAGES, out, domain="test", system_prompt="S", max_answer_chars=200, val_fraction=0.0,
                                seed=3, near_duplicate_threshold=0.8, teaching=fr.Teaching(exposures=5, paragraphs=1))
    first, second = build(tmp_path / "a"), build(tmp_path / "b")
    assert json.dumps(first.as_dict(), sort_keys=True) == json.dumps(second.as_dict(), sort_keys=True)
    assert (tmp_path / "a" / "sft").exists()
    assert first.exposures["field"]["min"] == first.exposures["field"]["max"] == 6
    assert first.exposures["entry"]["facts"] == 2 and first.exposures["entry"]["min"] == 6
    assert first.exposures["relation"]["max"] == 2
    assert first.exposures["lead"] == {"facts": 2, "min": 4, "mean": 4.0, "max": 4}, "Gaara's and Temari's openings"


def test_a_budget_in_exposures_per_fact_is_epochs_of_the_split():
    steps, said = budget_steps(max_steps=10, epochs=None, exposures=20, train_examples=800, statements_per_epoch=10,
                               effective_batch=8)
    assert steps == 200 and "2.00 epochs" in said and "20.0 exposures per fact" in said
    assert budget_steps(max_steps=10, epochs=None, exposures=None, train_examples=800, statements_per_epoch=10,
                        effective_batch=8)[0] == 10
    with pytest.raises(ValueError, match="training.exposures"):
        budget_steps(max_steps=10, epochs=None, exposures=5, train_examples=80, statements_per_epoch=None,
                     effective_batch=8)
