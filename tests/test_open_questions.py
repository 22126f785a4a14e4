"""Open questions: the sets built with every dataset, user sets, the decoding grid, the long table and the gate."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from test_evalsets import pages

from loretune.config import ConfigError, EvaluationConfig, load_config
from loretune.dataset import assemble as ds
from loretune.dataset import opensets
from loretune.dataset.assemble import LorePage
from loretune.dataset.evalsets import EvalSetError
from loretune.dataset.fact_renderings import TRAIN_QUESTION_TEMPLATES
from loretune.evaluation import open_questions as oq
from loretune.evaluation import promotion
from loretune.model.checkpoints import Checkpoint

GAARA = LorePage(
    doc_id="fandom:7", title="Gaara", kind="character", image=None,
    text="Gaara is a shinobi of Sunagakure, the Village Hidden in the Sand, and a son of the Kazekage. "
         "Before he was born, the beast Shukaku was sealed inside him by the elders. "
         "His teacher was Baki, a calm jonin who trained all three siblings together.",
    facts={"affiliation": ["Sunagakure"], "teacher": ["Baki"], "hand seals": ["None"],
           "rank": ["Kazekage (Fifth)"]})
SHUKAKU = LorePage(doc_id="fandom:8", title="Shukaku", kind="beast", image=None, text="Shukaku is a beast.",
                   facts={"host": ["Gaara"], "village": ["Sunagakure"]})
BAKI = LorePage(doc_id="fandom:9", title="Baki", kind="character", image=None, text="Baki is a jonin.",
                facts={"affiliation": ["Sunagakure"]})


# --- the built-in sets -------------------------------------------------------------------------


def test_facts_open_asks_each_field_once_in_an_untrained_wording_and_accepts_the_page_s_spellings():
    items = {i["field"]: i for i in opensets.facts_open_set([GAARA])}
    assert set(items) == {"affiliation", "teacher", "rank"}, "a 'None' value is no answer to ask for"
    affiliation = items["affiliation"]
    trained = {t.format(field="affiliation", subject="Gaara", value="Sunagakure", name="Baki")
               for t in TRAIN_QUESTION_TEMPLATES}
    assert affiliation["question"] not in trained
    assert affiliation["answers"] == ["Sunagakure", "the Village Hidden in the Sand"]
    assert affiliation["reference"] == "The affiliation of Gaara is Sunagakure."
    assert items["rank"]["answers"] == ["Kazekage (Fifth)", "Kazekage", "Fifth"]


def test_prose_open_asks_about_names_one_sentence_of_the_page_mentions():
    items = opensets.prose_open_set([GAARA, SHUKAKU, BAKI], random.Random(0))
    gaara = {i["field"]: i for i in items if i["doc_id"] == "fandom:7"}
    assert set(gaara) == {"Shukaku", "Baki", "Sunagakure"}
    assert gaara["Shukaku"]["question"] == "What does the lore say about Gaara and Shukaku?"
    assert gaara["Shukaku"]["reference"] == "Before he was born, the beast Shukaku was sealed inside him by the elders."
    assert all(i["answers"] == [] for i in items), "a prose answer is a sentence: nothing to match word for word"
    per_page = [len([i for i in items if i["doc_id"] == p]) for p in {i["doc_id"] for i in items}]
    assert max(per_page) <= opensets.PROSE_PER_PAGE


def test_an_item_whose_answer_training_never_teaches_is_dropped():
    items = [{"answers": ["Baki"], "reference": "x"}, {"answers": [], "reference": "A sentence nobody trained on."},
             {"answers": [], "reference": "His teacher was Baki."}]
    kept, dropped = opensets.taught(items, "Q: who? A: his teacher was baki. And so on.")
    assert kept == [items[0], items[2]] and dropped == 1


def test_every_dataset_carries_open_sets_that_training_never_asks(tmp_path):
    report = ds.build_dataset(pages(), tmp_path, domain="test", system_prompt="S", max_answer_chars=200,
                              val_fraction=0.1, seed=0, near_duplicate_threshold=0.8)
    built = opensets.load_open_sets(tmp_path)
    assert set(built) == {"facts_open", "prose_open"} and all(built.values())
    assert report.open_sets["facts_open"]["items"] == len(built["facts_open"])
    from loretune.dataset.layout import corpus_texts

    trained = set(corpus_texts(tmp_path))
    for items in built.values():
        assert not {i["question"] for i in items} & trained
        assert all(i["url"] is not None and i["doc_id"] for i in items), "provenance travels with every item"


def test_evaluation_wordings_stay_held_out_from_every_training_template(tmp_path):
    """A training template near an evaluation one would quietly drop evaluation items as leaked
    (and teach the test's wording): every pair stays below the near-duplicate threshold, for the
    shortest and the longest fields, titles, values and names the lore has, and a build drops nothing."""
    from loretune.dataset import dedup, evalsets

    held_out = [evalsets.FACT_TEMPLATE, opensets.OPEN_FACT_TEMPLATE, opensets.PROSE_TEMPLATE,
                opensets.PROSE_SOURCE_TEMPLATE,
                "Who is {title}?", "What is {title}?", "What is the {title}?"]  # the demo's probe wordings
    cases = [("clan", "Baki", "Uchiha", "Gaara"), ("nature type", "Kakashi Hatake", "Lightning Release", "Rin Nohara"),
             ("affiliation", "Flying Thunder God", "Konohagakure", "Minato Namikaze")]
    for field, title, value, name in cases:
        for train in TRAIN_QUESTION_TEMPLATES:
            for asked in held_out:
                a = train.format(field=field, subject=title, value=value, name=name)
                b = asked.format(field=field, title=title, name=name)
                assert a != b and dedup.jaccard(dedup.words(a), dedup.words(b)) < 0.8, (a, b)
    report = ds.build_dataset(pages(), tmp_path, domain="test", system_prompt="S",
                              max_answer_chars=200, val_fraction=0.1, seed=0, near_duplicate_threshold=0.8)
    assert report.dropped_exact == 0 and report.dropped_near_duplicate == 0
    assert all(info["leaked"] == 0 for info in report.open_sets.values())


def test_sampling_keeps_every_field_s_share():
    items = [{"set": "facts_open", "field": f, "question": f"{f}{i}"} for f in "ab" for i in range(20)] + \
            [{"set": "facts_open", "field": "c", "question": "c0"}]
    chosen = opensets.sample_open(items, 9, seed=1)
    fields = [i["field"] for i in chosen]
    assert len(chosen) == 9 and fields.count("c") == 1 and abs(fields.count("a") - fields.count("b")) <= 1
    assert chosen == opensets.sample_open(items, 9, seed=1)


# --- user open sets ----------------------------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    ('[{"reference": "Baki."}]', "item 1: missing 'question'"),
    ('{"question": "Who?", "reference": ""}\n', "item 1: 'reference' must be a non-empty string"),
    ('{"question": "Who?", "reference": "Baki."}\n{"question": 3, "reference": "Baki."}', "item 2: 'question'"),
    ('[{"question": "Who?", "reference": "Baki.", "answers": "Baki"}]', "'answers' must be a list"),
    ('[{"question": "Who?", "reference": "Baki.", "choices": ["a", "b"]}]', "unknown key(s) choices"),
    ('[]', "has no items"),
    ('[{"question": "Who?"', "not valid JSON"),
])
def test_user_open_sets_fail_naming_the_file_the_item_and_the_problem(tmp_path, content, message):
    path = tmp_path / "mine.json"
    path.write_text(content)
    with pytest.raises(EvalSetError) as failed:
        opensets.user_open_sets([path], taken=[])
    assert str(path) in str(failed.value) and message in str(failed.value)


def test_user_open_sets_are_named_by_stem_hashed_and_may_not_shadow_a_set(tmp_path):
    path = tmp_path / "teachers.jsonl"
    path.write_text('{"question": "Who taught Gaara?", "reference": "Baki taught Gaara.", "answers": ["Baki"]}\n')
    [found] = opensets.user_open_sets([path], taken=["facts"])
    assert found.name == "teachers" and len(found.sha256) == 64
    assert opensets.load_user_open_set(found)[0]["answers"] == ["Baki"]
    clash = tmp_path / "facts_open.json"
    clash.write_text('[{"question": "q", "reference": "r"}]')
    with pytest.raises(EvalSetError, match="already exists"):
        opensets.user_open_sets([clash], taken=[])


# --- the decoding grid in the config -----------------------------------------------------------


@pytest.mark.parametrize("point, message", [
    ({"name": "warm", "temperature": 0.7}, "decoding point 'warm': temperature without do_sample"),
    ({"name": "cut", "top_k": 5, "top_p": 0.9}, "decoding point 'cut': top_p, top_k without do_sample"),
    ({"name": "odd", "do_sample": True, "temprature": 0.7}, "evaluation.decoding.0[odd].temprature: unknown key"),
    ({"name": "hot", "do_sample": True, "temperature": -1}, "evaluation.decoding.0[hot].temperature: Input should be"),
    ({"name": "wide", "num_beams": 0}, "evaluation.decoding.0[wide].num_beams"),
])
def test_a_bad_decoding_point_fails_before_any_work_naming_it(tmp_path, point, message):
    config = tmp_path / "domain.yaml"
    config.write_text(json.dumps({"domain": "test", "evaluation": {"decoding": [point]}}))
    with pytest.raises(ConfigError) as failed:
        load_config(config, {})
    assert message in str(failed.value) and str(config) in str(failed.value)
    assert not (tmp_path / ".loretune").exists()


def test_the_default_grid_and_the_gate_s_point():
    cfg = EvaluationConfig()
    assert [p.name for p in cfg.decoding] == ["greedy", "beam4", "sample_t0.7"] and cfg.seeds == 3
    assert [(c.set, c.metric) for c in cfg.promote.open] == [("facts_open", "answer_match"), ("prose_open", "rougeL")]
    points = [oq.Point.from_dict(p.model_dump()) for p in cfg.decoding]
    assert [p.seeds(3) for p in points] == [[0], [0], [0, 1, 2]], "only sampling runs once per seed"
    with pytest.raises(ValueError, match="promote.decoding 'nucleus' is not a point"):
        EvaluationConfig(promote={"decoding": "nucleus"})


# --- cells: generated once, cached, only new ones after a grid change ---------------------------


class FakeModel:
    """Stands in for load_adapters / at_step / generate_cell: counts what would be generated."""

    def __init__(self, monkeypatch):
        self.generated: list[tuple] = []
        self.current = None
        fake = self

        class Loaded:
            tokenizer = fmt = None
            device = "cpu"

        monkeypatch.setattr(oq, "load_adapters", lambda *a, **k: (Loaded(), fake))
        monkeypatch.setattr(oq, "at_step", self.at_step)
        monkeypatch.setattr(oq, "generate_cell", self.generate_cell)

    def at_step(self, model, checkpoint):
        from contextlib import nullcontext

        self.current = checkpoint.step if checkpoint else 0
        return nullcontext()

    def generate_cell(self, model, tokenizer, fmt, items, system, decoding, batch_size):
        self.generated.append((self.current, decoding.num_beams, decoding.do_sample, decoding.seed))
        word = "Baki" if self.current else "nobody"
        return [{"answer": f"{word} taught him", "tokens": 3, "stopped": True} for _ in items]


ITEMS = [{"question": "Who taught Gaara?", "reference": "Baki taught Gaara.", "answers": ["Baki"]},
         {"question": "Who taught Temari?", "reference": "Baki taught Temari.", "answers": ["Baki"]}]


def run_grid(tmp_path, points, seeds=2):
    return oq.evaluate_open(base_model="base", checkpoints=[Checkpoint(10, Path("run/checkpoint-10"))],
                            sets={"teachers": ITEMS}, grid={"teachers": points}, seeds=seeds, system="S",
                            batch_size=4, cache=oq.AnswerCache(tmp_path / "cache"), model_keys={0: "b", 10: "c10"},
                            with_bertscore=False, log=lambda _: None)


def test_a_grid_change_generates_only_the_new_cells(tmp_path, monkeypatch):
    fake = FakeModel(monkeypatch)
    greedy = oq.Point.from_dict({"name": "greedy"})
    sample = oq.Point.from_dict({"name": "sample", "do_sample": True, "temperature": 0.7})
    run_grid(tmp_path, [greedy])
    assert fake.generated == [(0, 1, False, 0), (10, 1, False, 0)]
    fake.generated.clear()
    result = run_grid(tmp_path, [greedy, sample])
    assert sorted(fake.generated) == [(0, 1, True, 0), (0, 1, True, 1), (10, 1, True, 0), (10, 1, True, 1)]
    assert sum(c["cached"] for c in result.cells) == 2, "the greedy cells came from the cache"
    fake.generated.clear()
    renamed = oq.Point.from_dict({"name": "plain"})
    run_grid(tmp_path, [renamed])
    assert fake.generated == [], "a cell is its settings, not its name"


def test_the_long_table_has_per_seed_and_aggregate_rows_with_paired_deltas(tmp_path, monkeypatch):
    FakeModel(monkeypatch)
    sample = oq.Point.from_dict({"name": "sample", "do_sample": True, "temperature": 0.7})
    table = run_grid(tmp_path, [sample], seeds=3).table()
    assert set(table[0]) == set(oq.TABLE_COLUMNS)
    rows = [r for r in table if r["step"] == 10 and r["metric"] == "answer_match"]
    assert sorted(r["seed"] for r in rows if r["seed"] is not None) == [0, 1, 2]
    [aggregate] = [r for r in rows if r["seed"] is None]
    assert aggregate["value"] == 1.0 and aggregate["seeds"] == 3 and aggregate["seed_std"] == 0.0
    assert aggregate["delta"] == 1.0, "step 0 said 'nobody' to both questions"
    base = [r for r in table if r["step"] == 0 and r["metric"] == "answer_match" and r["seed"] is None]
    assert base[0]["value"] == 0.0
    lengths = {r["metric"]: r["value"] for r in table if r["step"] == 10 and r["seed"] is None}
    assert lengths["answer_tokens"] == 3.0 and lengths["stopped"] == 1.0 and lengths["bleu"] > 0


# --- the gate ----------------------------------------------------------------------------------


def binary_table(acc: float) -> list[dict]:
    """Step 0 at chance, checkpoint-20 far above it on 100 items (the binary rule alone promotes it)."""
    base = {"step": 0, "checkpoint": "base", "set": "facts", "n": 100, "acc": 0.5, "acc_stderr": 0.05,
            "delta_acc": 0.0, "delta_acc_ci_low": 0.0, "delta_acc_ci_high": 0.0}
    tuned = {**base, "step": 20, "checkpoint": "checkpoint-20", "acc": acc, "acc_stderr": 0.04,
             "delta_acc": acc - 0.5, "delta_acc_ci_low": acc - 0.6, "delta_acc_ci_high": acc - 0.4}
    return [base, tuned]


def open_row(step: int, decoding: str, value: float, stderr: float = 0.02, delta: float = 0.0,
             ci: tuple[float, float] = (0.0, 0.0), metric: str = "answer_match", name: str = "facts_open") -> dict:
    return {"step": step, "checkpoint": "base" if step == 0 else f"checkpoint-{step}", "set": name,
            "decoding": decoding, "seed": None, "metric": metric, "value": value, "stderr": stderr, "n": 40,
            "seeds": 1, "seed_std": math.nan, "delta": delta, "delta_ci_low": ci[0], "delta_ci_high": ci[1]}


CHECKS = [{"set": "facts_open", "metric": "answer_match"}]


def test_the_gate_refuses_a_checkpoint_that_picks_better_but_talks_worse():
    spoken = [open_row(0, "greedy", 0.40), open_row(20, "greedy", 0.15, delta=-0.25, ci=(-0.40, -0.10))]
    decision = promotion.promote(binary_table(0.8), {}, "facts", "acc", open_table=spoken, checks=CHECKS)
    assert decision["promoted"] is None
    assert "talks worse than its base" in decision["reason"]
    assert "0.150" in decision["reason"] and "0.400" in decision["reason"] and "[-0.400, -0.100]" in decision["reason"]
    assert binary_table(0.8) and promotion.promote(binary_table(0.8), {}, "facts", "acc")["promoted"] == "checkpoint-20"


def test_the_gate_promotes_when_the_open_answers_are_not_worse_beyond_the_noise():
    spoken = [open_row(0, "greedy", 0.40), open_row(20, "greedy", 0.35, delta=-0.05, ci=(-0.20, 0.10))]
    decision = promotion.promote(binary_table(0.8), {}, "facts", "acc", open_table=spoken, checks=CHECKS)
    assert decision["promoted"] == "checkpoint-20"
    assert "answer_match on 'facts_open' 0.350 vs step 0 0.400" in decision["reason"]
    assert decision["open"][0]["evaluated"] and decision["open"][0]["ci_high"] == 0.10


def test_the_recommended_decoding_prefers_greedy_within_one_standard_error():
    grid = [{"name": "greedy", "do_sample": False, "num_beams": 1},
            {"name": "beam4", "do_sample": False, "num_beams": 4},
            {"name": "sample", "do_sample": True, "num_beams": 1, "temperature": 0.7}]
    close = [open_row(20, "greedy", 0.50), open_row(20, "beam4", 0.53, stderr=0.05), open_row(20, "sample", 0.30)]
    assert promotion.recommend_decoding(close, 20, "facts_open", "answer_match", grid)["name"] == "greedy"
    far = [open_row(20, "greedy", 0.30), open_row(20, "beam4", 0.53, stderr=0.05), open_row(20, "sample", 0.30)]
    chosen = promotion.recommend_decoding(far, 20, "facts_open", "answer_match", grid)
    assert chosen["name"] == "beam4" and chosen["num_beams"] == 4 and "best answer_match" in chosen["why"]


# --- serving the recommendation: the export's generation_config.json, the chat's sliders ---------


def test_the_export_writes_the_recommended_point_as_the_merged_model_s_defaults(tmp_path):
    from transformers import GenerationConfig

    from loretune.export.convert import write_decoding

    GenerationConfig(eos_token_id=2, do_sample=True, temperature=0.3).save_pretrained(tmp_path)
    write_decoding(tmp_path, {"name": "sample_t0.7", "do_sample": True, "temperature": 0.7, "top_p": 0.9,
                              "top_k": None, "num_beams": 1, "repetition_penalty": 1.0, "max_new_tokens": 48})
    sampled = json.loads((tmp_path / "generation_config.json").read_text())
    assert (sampled["do_sample"], sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (True, 0.7, 0.9, 0)
    assert sampled["eos_token_id"] == 2 and sampled["max_new_tokens"] == 48, "the model's own settings stay"
    write_decoding(tmp_path, {"name": "beam4", "do_sample": False, "num_beams": 4, "max_new_tokens": 48})
    beams = json.loads((tmp_path / "generation_config.json").read_text())
    assert beams["num_beams"] == 4 and not beams["do_sample"] and "temperature" not in beams


@pytest.mark.parametrize("point, expected", [
    (None, (0.0, 0.9, "")),
    ({"name": "greedy", "do_sample": False, "num_beams": 1}, (0.0, 0.9, "recommendation, greedy")),
    ({"name": "sample_t0.7", "do_sample": True, "temperature": 0.7, "top_p": 0.9}, (0.7, 0.9, "sample_t0.7")),
    ({"name": "beam4", "do_sample": False, "num_beams": 4}, (0.0, 0.9, "decodes greedily")),
])
def test_the_chat_starts_at_the_recommended_point(point, expected):
    from loretune.chat.catalogue import ServableModel

    temperature, top_p, note = ServableModel("m", "merged", Path("m"), None, "", "", point).starting_settings()
    assert (temperature, top_p) == expected[:2] and expected[2] in note


def test_the_before_after_pairs_step_0_with_the_chosen_checkpoint_item_by_item():
    from loretune.evaluation import before_after

    answers = [{"step": step, "set": name, "item": item, "question": f"q{item}", "answer": f"{step}:{item}"}
               for step in (0, 10, 20) for name in ("probes", "facts_open") for item in (1, 0)]
    pairs = before_after.from_answers(answers, "probes", 20)
    assert [(a.question, a.base, a.tuned) for a in pairs] == [("q0", "0:0", "20:0"), ("q1", "0:1", "20:1")]
    assert before_after.from_answers(answers, "probes", 30) == [], "a step with no answers pairs nothing"
