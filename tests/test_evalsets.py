"""Evaluation sets: balanced against no-knowledge guesses, never self-overlapping, validated on input."""

from __future__ import annotations

import json
import random

import pytest

from loretune.dataset import assemble as ds
from loretune.dataset import evalsets, layout
from loretune.dataset.assemble import LorePage
from loretune.dataset.evalsets import EvalSetError, TextIndex

FIRST = ["Ayo", "Bex", "Cal", "Dov", "Eli", "Fen", "Gus", "Hal", "Ivo", "Jax", "Kip", "Lev", "Mox", "Ned", "Oto",
         "Pim", "Quin", "Rex", "Sol", "Tam", "Uri", "Vik", "Wes", "Yul"]
LAST = ["Abe", "Bor", "Cun", "Dax", "Eno", "Fay", "Gil", "Hux", "Ide", "Jun", "Kor", "Lum", "Mip", "Nox", "Orr",
        "Pax", "Qel", "Rho", "Sid", "Tov", "Ulm", "Vox", "Wyn", "Yaz"]
VILLAGES = ["Konohagakure", "Sunagakure", "Kirigakure", "Iwagakure", "Kumogakure", "Otogakure"]


def pages(n: int = 24) -> list[LorePage]:
    """Most pages share one village (the frequent answer), as a real wiki's characters do."""
    out = []
    for i in range(n):
        village = VILLAGES[0] if i % 3 else VILLAGES[1 + i % 5]
        affiliations = [village] + (["Ninja Academy"] if i % 4 == 0 else [])
        title = f"{FIRST[i]} {LAST[i]}"
        out.append(LorePage(doc_id=f"fandom:{i}", title=title, kind="character",
                            text=f"Everyone knows that {title} grew up in the village of {village}. "
                                 f"In the hills, {title} trained with {out[-1].title if out else 'nobody'} for years.",
                            facts={"village": [village], "affiliation": affiliations}, image=f"img{i}"))
    return out


def index_for(ps: list[LorePage]) -> TextIndex:
    return TextIndex([p.text for p in ps] + [v for p in ps for vs in p.facts.values() for v in vs] * 3)


def test_wrong_options_are_never_related_to_the_right_ones():
    assert evalsets.related("Konohagakure", "Konohagakure, Ninja Academy")
    assert evalsets.related("Chūnin", "chunin")
    assert not evalsets.related("Yin Release", "Yin–Yang Release")
    assert not evalsets.related("Nara", "Naruto Uzumaki")
    ps = pages()
    items, _ = evalsets.facts_set(ps, index_for(ps), random.Random(0))
    by_doc = {p.doc_id: p for p in ps}
    for item in items:
        right, wrong = item["choices"]
        own = by_doc[item["doc_id"]].facts[item["field"]]
        assert right in own, "multi-valued fields are asked value by value"
        assert not any(evalsets.related(wrong, mine) for mine in own), item


def test_frequency_and_length_say_nothing_about_the_answer():
    ps = pages()
    index = index_for(ps)
    items, _ = evalsets.facts_set(ps, index, random.Random(0))
    placed = evalsets.place_answers(items, random.Random(0))
    values = evalsets.baselines(placed, index)
    n = len(placed)
    assert n >= 20
    assert abs(sum(item["answer"] == 0 for item in placed) - n / 2) <= 0.5
    for name in evalsets.BASELINES:
        assert abs(values[name]["value"] - 0.5) <= 2 * 0.5 / n ** 0.5, (name, values[name])
    evalsets.check_baselines("facts", values, n)  # does not raise
    # Uniformly drawn distractors, as before this set existed, let frequency answer:
    rng = random.Random(0)
    naive = [{"choices": [p.facts["village"][0], rng.choice([v for v in VILLAGES if v != p.facts["village"][0]])],
              "answer": 0} for p in ps]
    assert evalsets.baselines(naive, index)["more_common"]["value"] > 0.6


def test_a_set_that_frequency_answers_fails_the_build_naming_it():
    # The right answer is always the village the training text names most: balanced positions, still broken.
    biased = [{"question": "q", "choices": ["Konohagakure", "Iwagakure"][:: 1 - 2 * (i % 2)], "answer": i % 2}
              for i in range(50)]
    index = TextIndex(["Konohagakure"] * 5 + ["Iwagakure"])
    values = evalsets.baselines(biased, index)
    assert values["always_first"]["value"] == 0.5
    with pytest.raises(EvalSetError, match=r"evaluation set 'facts': the 'more_common' baseline scores 1\.000"):
        evalsets.check_baselines("facts", values, 50)


def test_synthetic_cloze_blanks_a_name_and_offers_a_same_kind_one():
    ps = pages()
    items, _ = evalsets.synthetic_set(ps, index_for(ps), random.Random(0))
    assert len(items) > len(ps)
    titles = {p.title for p in ps}
    for item in items:
        statement = item["question"].split("? ", 1)[1]
        assert statement.count(evalsets.BLANK) == 1
        right, wrong = item["choices"]
        assert (right in titles) == (wrong in titles), "options are of one kind"
        assert right not in statement and wrong not in statement, "nothing in the statement gives it away"
        source = next(p.text for p in ps if p.doc_id == item["doc_id"])
        assert statement.replace(evalsets.BLANK, right) in source, "the fact behind it is in the page's prose"


def test_pictures_ask_for_a_title_of_the_same_kind():
    ps = pages(6) + [LorePage("youtube:1", "A video about villages", "text", {}, "imgv"),
                     LorePage("youtube:2", "Another video", "text", {}, "imgw")]
    items, _ = evalsets.pictures_set(ps, index_for(ps), random.Random(0))
    assert len(items) == 8
    for item in items:
        kinds = {p.kind for p in ps if p.title in item["choices"]}
        assert len(kinds) == 1 and item["image_sha256"]


def test_sampling_is_seeded_and_keeps_positions_balanced():
    items = [{"question": f"q{i}", "choices": ["a", "b"], "answer": int(i < 70)} for i in range(100)]
    first = evalsets.sample(items, 40, seed=3)
    assert first == evalsets.sample(items, 40, seed=3) != evalsets.sample(items, 40, seed=4)
    assert sum(q["answer"] for q in first) == 20
    assert evalsets.sample(items, None, seed=0) == items


@pytest.mark.parametrize("content, message", [
    ('[{"question": "Who?", "choices": ["A"], "answer": 0}]', "item 1: 'choices' must be a list of two or more"),
    ('{"question": "Who?", "choices": ["A", "B"], "answer": "C"}\n', "item 1: 'answer' 'C' is not one of its choices"),
    ('{"question": "Who?", "choices": ["A", "B"], "answer": 0}\n{"question": "", "choices": ["A", "B"], "answer": 1}\n',
     "item 2: 'question' must be a non-empty string"),
    ('{"question": "Who?", "choices": ["A", "B"], "answer": 2}\n', "item 1: 'answer' index 2 is out of range"),
    ('{"question": "Who?", "choices": ["A", "A"], "answer": 0}\n', "the same choice twice"),
    ('{"question": "Who?", "choices": ["A", "B"]}\n', "item 1: missing answer"),
    ('{"question": "Who?", "choices": ["A", "B"], "answer": 0}\n{oops\n', "line 2 is not valid JSON"),
    ("[]", "has no items"),
])
def test_user_sets_are_validated_with_errors_naming_file_and_item(tmp_path, content, message):
    path = tmp_path / "quiz.jsonl"
    path.write_text(content)
    with pytest.raises(EvalSetError) as error:
        evalsets.user_sets([path])
    assert str(path) in str(error.value) and message in str(error.value)


def test_user_sets_are_named_by_stem_hashed_and_take_answers_by_text(tmp_path):
    (tmp_path / "quiz.json").write_text(json.dumps([{"question": "Who leads Konoha?", "choices": ["Hokage", "Kazekage"],
                                                     "answer": "Hokage"}]))
    (tmp_path / "facts.jsonl").write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    [quiz] = evalsets.user_sets(["quiz.json"], relative_to=tmp_path)
    assert quiz.name == "quiz" and quiz.fingerprint_token().startswith("quiz@")
    assert evalsets.load_user_set(quiz)[0]["answer"] == 0
    with pytest.raises(EvalSetError, match="a set named 'facts' already exists"):
        evalsets.user_sets([tmp_path / "facts.jsonl"])
    (tmp_path / "quiz.json").write_text("[]")
    with pytest.raises(EvalSetError, match="changed while the flow ran"):
        evalsets.load_user_set(quiz)


def test_permuted_control_teaches_every_value_on_another_page():
    clans = ["Uzumaki", "Uchiha", "Uchiha", "Hyuga", "Nara", "Nara"]
    ps = [ds.LorePage(doc_id=f"d{i}", title=f"T{i}", text="prose", facts={"clan": [clan]}, image=None)
          for i, clan in enumerate(clans)]
    moved = ds.permute_facts(ps, seed=0)
    assert sorted(p.facts["clan"][0] for p in moved) == sorted(clans), "the same values, as often"
    assert all(m.facts["clan"] != p.facts["clan"] for m, p in zip(moved, ps)), "no page keeps its true value"
    assert all(m.text == "" for m in moved), "no prose: it would teach the true pairing"


def test_lore_without_images_has_no_pictures_set_and_still_evaluates(tmp_path):
    lore = [ds.LorePage(doc_id=f"fandom:{i}", title=f"{FIRST[i]} {LAST[i]}", text=p.text, facts=p.facts, image=None,
                        kind="character") for i, p in enumerate(pages())]
    ds.build_dataset(lore, tmp_path, domain="test", system_prompt="S", max_answer_chars=200, val_fraction=0.1,
                     seed=0, near_duplicate_threshold=0.8)
    sets, baselines = evalsets.load_eval_sets(tmp_path, [], max_items=10, seed=0)
    assert list(sets) == ["facts", "synthetic"] and set(baselines) == {"facts", "synthetic"}
    assert all(len(items) == 10 for items in sets.values())


def test_every_point_of_a_data_scaling_sweep_answers_the_same_questions_with_the_same_options(tmp_path):
    """Distractors are balanced on frequencies in the lore: were that the share a point trains on,
    each point would get other options and its score would not compare with the next one's."""
    built = {}
    for fraction in (0.25, 1.0):
        out = tmp_path / str(fraction)
        out.mkdir()
        report = ds.build_dataset(pages(), out, domain="test", system_prompt="S", max_answer_chars=200,
                                  val_fraction=0.1, seed=0, near_duplicate_threshold=0.8, fraction=fraction)
        built[fraction] = report.train, {p.name: p.read_text() for p in sorted((out / layout.EVAL_DIR).iterdir())}
    (few, few_sets), (all_, all_sets) = built[0.25], built[1.0]
    assert few < all_ / 2, "the 0.25 point trains on a quarter of the lore"
    assert few_sets == all_sets and all(text.strip() for text in all_sets.values())
