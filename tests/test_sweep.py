"""Sweeps as flows: a grid of overrides, one finetune subflow run a point, one comparison."""

from __future__ import annotations

import pytest

from loretune.evaluation import sweep as grids
from tests.recipes import QUICK_OPEN, TINY


def test_the_grid_is_the_cross_product_and_a_point_reads_as_its_overrides():
    points = grids.points({"dataset.fraction": [0.5, 1.0], "training.lora.r": [4, 8]})
    assert points == [{"dataset.fraction": 0.5, "training.lora.r": 4}, {"dataset.fraction": 0.5, "training.lora.r": 8},
                      {"dataset.fraction": 1.0, "training.lora.r": 4}, {"dataset.fraction": 1.0, "training.lora.r": 8}]
    assert grids.label(points[1]) == "fraction=0.5, r=8"
    with pytest.raises(ValueError, match="at least one value"):
        grids.points({"dataset.fraction": []})


@pytest.mark.slow
def test_a_data_scaling_sweep_runs_each_point_as_a_cached_finetune_and_compares_them(prefect_server, samples, tmp_path,
                                                                                     monkeypatch):
    from loretune.flows.sweep import sweep

    monkeypatch.setenv("LORETUNE_HOME", str(tmp_path / "home"))
    common = {**TINY, **QUICK_OPEN, "store": str(tmp_path / "store"), "training.max_steps": 4, "training.save_steps": 2,
              "evaluation.max_items": 12, "export.enabled": False}
    grid = {"dataset.fraction": [0.5, 1.0]}
    result = sweep(grid=grid, overrides=common, sample_sources=samples.base_url)

    assert [run["point"] for run in result["runs"]] == grids.points(grid)
    half, full = (run["stages"] for run in result["runs"])
    assert full["documents"]["version"] == half["documents"]["version"], "the second point reuses the documents"
    assert full["features"] == {**half["features"], "state": "Cached"}  # (the tiny model follows the dataset)
    assert half["dataset"]["version"] != full["dataset"]["version"], "but not the dataset: its share differs"
    rows = result["rows"]
    assert {(r["fraction"], r["set"]) for r in rows} == {(f, s) for f in (0.5, 1.0) for s in ("facts", "synthetic", "pictures")}
    for row in rows:
        assert 0 <= row["acc"] <= 1 and row["acc_stderr"] > 0 and row["best_baseline"] is not None
        assert row["checkpoint"] == "checkpoint-4" and row["promoted"] is False

    spoken = result["open_rows"]
    assert {(r["fraction"], r["set"], r["metric"]) for r in spoken} == {
        (f, s, m) for f in (0.5, 1.0) for s in ("facts_open", "prose_open") for m in grids.OPEN_METRICS
        if (s, m) != ("prose_open", "answer_match")}, "a prose reference is a sentence: nothing to match"
    assert all(r["decoding"] == "greedy" and r["checkpoint"] == "checkpoint-4" and r["stderr"] is not None
               for r in spoken)

    again = sweep(grid=grid, overrides=common, sample_sources=samples.base_url)
    for run in again["runs"]:  # ingest asks the sources again; everything it feeds is reused
        assert {run["stages"][s]["state"] for s in ("dataset", "model", "checkpoints", "evaluation")} == {"Cached"}, run
    assert again["rows"] == rows
