"""Bases side by side: one cached finetune run per base, one table; a base that cannot be had is a row."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loretune.evaluation import compare as bases_table
from loretune.flows.cli import app
from tests.recipes import QUICK_OPEN, TINY


def test_each_base_is_a_point_with_its_revision_and_its_own_overrides():
    points = bases_table.points(["tiny", "someone/model@v1.2"], {"tiny": {"training.learning_rate": 0.01}})
    assert points == [{"model.base": "tiny", "training.learning_rate": 0.01},
                      {"model.base": "someone/model", "model.revision": "v1.2"}]
    assert [bases_table.label(p) for p in points] == ["tiny (learning_rate=0.01)", "someone/model@v1.2"]


@pytest.mark.parametrize("bases, per_base, message", [
    ([], {}, "no bases"),
    (["tiny", "tiny"], {}, "tiny listed twice"),
    (["tiny"], {"gemma3-270m": {"training.max_steps": 3}}, "names gemma3-270m, which is not among the bases"),
])
def test_a_bad_list_of_bases_is_one_clear_error(bases, per_base, message):
    with pytest.raises(ValueError, match=message):
        bases_table.points(bases, per_base)


def test_the_cli_refuses_a_bad_comparison_before_any_work(tmp_path):
    runner = CliRunner()
    twice = runner.invoke(app, ["compare", "--store", str(tmp_path), "--bases", "tiny,tiny"])
    assert twice.exit_code == 2 and "tiny listed twice" in twice.output
    bad_key = runner.invoke(app, ["compare", "--store", str(tmp_path), "--bases", "tiny",
                                  "--per-base", "{tiny: {training.lora.rank: 8}}"])
    assert bad_key.exit_code == 2 and "training.lora.rank" in bad_key.output
    assert not (tmp_path / "documents").exists(), "nothing ran"


@pytest.mark.slow
def test_a_comparison_runs_each_base_once_reports_the_one_it_cannot_have_and_repeats_for_free(
        prefect_server, samples, tmp_path, monkeypatch):
    from loretune.flows.compare import compare

    monkeypatch.setenv("LORETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    common = {**TINY, **QUICK_OPEN, "store": str(tmp_path / "store"), "training.max_steps": 4, "training.save_steps": 2,
              "evaluation.max_items": 12, "export.enabled": False}
    bases = ["tiny", "someone/not-here@main"]
    result = compare(bases=bases, per_base={"tiny": {"training.lora.r": 4}}, overrides=common,
                     sample_sources=samples.base_url)

    scored = [r for r in result["rows"] if r["error"] is None]
    (missing,) = [r for r in result["rows"] if r["error"] is not None]
    assert missing["base"] == "someone/not-here@main" and "HF_HUB_OFFLINE" in missing["error"], missing
    assert {r["set"] for r in scored} == {"facts", "synthetic", "pictures"}
    for row in scored:
        assert row["base"] == "tiny (r=4)" and row["checkpoint"] == "checkpoint-4"
        assert 0 <= row["acc"] <= 1 and row["acc_stderr"] > 0 and row["step0_acc"] is not None
        assert row["instruct"] is False and row["train_steps"] == 4 and row["tokens_per_s"] > 0
        assert row["trainable"] > 0 and row["wall_s"] > 0
    (run,) = [r for r in result["runs"] if "stages" in r]
    adapter = json.loads((tmp_path / "store" / "checkpoints" / run["stages"]["checkpoints"]["version"]
                          / "checkpoint-4" / "adapter_config.json").read_text())
    assert adapter["r"] == 4, "the base's own override reached its run"
    assert {(r["base"], r["set"]) for r in result["open_rows"]} >= {("tiny (r=4)", "facts_open")}

    again = compare(bases=bases, per_base={"tiny": {"training.lora.r": 4}}, overrides=common,
                    sample_sources=samples.base_url)
    (run,) = [r for r in again["runs"] if "stages" in r]
    assert {run["stages"][s]["state"] for s in ("dataset", "model", "checkpoints", "evaluation")} == {"Cached"}
    strip = ("wall_s",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in again["rows"]] == \
        [{k: v for k, v in r.items() if k not in strip} for r in result["rows"]], "a repeated comparison trains nothing"
