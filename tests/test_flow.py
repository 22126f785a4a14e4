"""The finetune flow end to end on the sample sources, under Prefect's test harness.

One cold run in a fresh store, then re-runs that each change one thing, checking which stages
worked (Completed) and which were cache hits (Cached), and what the store holds afterwards.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from recipes import QUICK_OPEN, TINY

from loretune.config import ConfigError
from loretune.store import MANIFEST, ArtifactStore, content_hash
from loretune.training.retention import GENERAL_QUESTIONS, whole_sentences

FAST = {**TINY, **QUICK_OPEN, "training.max_steps": 4, "training.save_steps": 2, "evaluation.batch_size": 32, "evaluation.max_items": 200}
STAGES = ["documents", "images", "features", "dataset", "model", "checkpoints", "evaluation", "export"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def run(prefect_server, samples, store):
    from loretune.flows.finetune import finetune

    def run_(**overrides):
        return finetune(config="deployments/naruto.yaml", overrides={"store": str(store), **FAST, **overrides},
                        sample_sources=samples.base_url)

    return run_


@pytest.fixture(scope="module")
def cold(run):
    return run()


def versions(store: Path) -> dict[str, set[str]]:
    artifacts = ArtifactStore(store)
    return {stage: {m["version"] for m in artifacts.versions(stage)} for stage in artifacts.stages()}


def states(result: dict) -> dict[str, str]:
    return {stage: v["state"] for stage, v in result["stages"].items()}


def test_cold_run_publishes_every_stage_with_a_valid_manifest(cold, store):
    assert list(cold["stages"]) == STAGES
    assert set(states(cold).values()) == {"Completed"}
    for stage, info in cold["stages"].items():
        folder = store / stage / info["version"]
        manifest = json.loads((folder / MANIFEST).read_text())
        assert manifest["stage"] == stage and manifest["version"] == info["version"]
        assert manifest["content_hash"] == content_hash(folder), f"{stage}: content does not match its manifest"
        assert manifest["flow_run_id"] and manifest["created_at"] and manifest["code_version"]
        assert manifest["counts"]["files"] > 0 and manifest["counts"]["bytes"] > 0
    assert not list((store / ".scratch").iterdir()), "scratch space must be empty after a run"


def test_manifests_record_their_inputs(cold, store):
    manifest = ArtifactStore(store).manifest("checkpoints", cold["stages"]["checkpoints"]["version"])
    expected = {f"{s}@{cold['stages'][s]['version']}" for s in ("dataset", "features", "model")}
    assert set(manifest["inputs"].values()) == expected
    assert manifest["parameters"]["params"]["max_steps"] == 4
    assert manifest["counts"]["examples_without_trainable_tokens"] == 0
    import torch

    runtime = manifest["parameters"]["runtime"]
    assert runtime["backend"] == "hf" and runtime["dtype"] == "float32" and runtime["torch"] == torch.__version__
    dataset = ArtifactStore(store).manifest("dataset", cold["stages"]["dataset"]["version"])
    retained = manifest["counts"]["retention_examples"]
    folder = ArtifactStore(store).local_path("checkpoints", cold["stages"]["checkpoints"]["version"])
    answers = [json.loads(line) for line in (folder / "retention.jsonl").read_text().splitlines()]
    assert len(answers) == len(GENERAL_QUESTIONS), "the base answered every general question"
    # The tiny random model may say no whole sentence at all; then no retention example joins.
    usable = any(whole_sentences(a) for a in answers)
    assert retained == (round(0.1 * dataset["counts"]["train"]) if usable else 0), "the retention share joins"
    assert manifest["details"]["label_check"]["examples"] == dataset["counts"]["train"] + retained, \
        "every example was checked"


def test_published_checkpoints_name_no_machine_path_and_keep_no_resume_state(cold, store):
    folder = store / "checkpoints" / cold["stages"]["checkpoints"]["version"]
    names = {p.name for p in folder.rglob("*")}
    assert "adapter_model.safetensors" in names and "trainer_state.json" in names
    assert not names & {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}
    for path in folder.rglob("*.json"):
        assert str(store) not in path.read_text(), f"{path.relative_to(folder)} names the store's path"


def test_features_say_their_clip_weights_are_random(cold, store):
    manifest = ArtifactStore(store).manifest("features", cold["stages"]["features"]["version"])
    assert manifest["details"]["random_weights"] is True
    assert "random" in manifest["details"]["model_id"]


def test_evaluation_has_every_set_at_step_zero_and_every_checkpoint(cold):
    table = cold["evaluation"]
    assert [(r["step"], r["set"]) for r in table] == [
        (step, name) for step in (0, 2, 4) for name in ("facts", "synthetic", "pictures")]
    assert {r["checkpoint"] for r in table if r["step"] == 0} == {"base"}
    for row in table:
        assert 0.0 <= row["acc"] <= 1.0 and 0.0 < row["acc_stderr"] < 0.2
        assert row["n"] == (200 if row["set"] != "pictures" else row["n"]) and row["n"] > 20
    n = {r["set"]: r["n"] for r in table}
    for name, values in cold["baselines"].items():
        assert set(values) == {"always_first", "more_common", "shorter"}
        first = values["always_first"]["value"] * n[name]
        assert abs(first - n[name] / 2) <= 0.5, f"{name}: answer positions are not balanced"


def test_what_each_checkpoint_says_is_scored_over_the_grid_and_kept_with_every_answer(cold, store):
    from loretune.evaluation.open_questions import TABLE_COLUMNS

    folder = store / "evaluation" / cold["stages"]["evaluation"]["version"]
    table = cold["generation"]
    assert {r["set"] for r in table} == {"facts_open", "prose_open", "probes"}
    cells = {(r["step"], r["set"], r["decoding"], r["seed"]) for r in table if r["metric"] == "answer_tokens"}
    for name in ("facts_open", "prose_open"):
        assert {(s, name, "greedy", seed) for s in (0, 2, 4) for seed in (0, None)} <= cells
        assert {(s, name, "sample_t0.7", seed) for s in (0, 2, 4) for seed in (0, 1, None)} <= cells
    assert {(r["metric"], r["n"]) for r in table if r["set"] == "facts_open" and r["seed"] is None} >= {
        ("answer_match", 4), ("rougeL", 4), ("bleu", 4), ("chrf", 4), ("bertscore_f1", 4), ("stopped", 4)}
    assert (folder / "generation.csv").read_text().splitlines()[0].split(",") == TABLE_COLUMNS
    answers = [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]
    assert len({(a["step"], a["set"], a["decoding"], a["seed"], a["item"]) for a in answers}) == len(answers)
    assert all(isinstance(a["answer"], str) and a["tokens"] <= 8 for a in answers)
    assert {p.name for p in folder.glob("generation_*.png")} >= {"generation_rougeL.png", "generation_answer_match.png"}
    recommended = cold["promotion"]["decoding"]
    assert set(recommended) == {"checkpoint-2", "checkpoint-4"}
    assert recommended["checkpoint-4"]["name"] in {"greedy", "sample_t0.7"} and recommended["checkpoint-4"]["why"]
    compared = cold["before_after"]
    assert compared["decoding"] == "greedy" and len(compared["answers"]) == 3, "the probes: facts_open's first three"


def test_a_new_decoding_point_generates_only_its_own_cells(cold, run, store):
    import csv

    grid = [*QUICK_OPEN["evaluation.decoding"], {"name": "beam2", "num_beams": 2, "max_new_tokens": 8}]
    result = run(**{"evaluation.decoding": grid})
    assert {s for s, state in states(result).items() if state == "Completed"} == {"documents", "evaluation"}
    folder = store / "evaluation" / result["stages"]["evaluation"]["version"]
    with open(folder / "cells.csv", newline="") as handle:
        cells = list(csv.DictReader(handle))
    generated = {(c["step"], c["set"], c["decoding"]) for c in cells if c["cached"] == "False"}
    assert generated == {(s, n, "beam2") for s in ("0", "2", "4") for n in ("facts_open", "prose_open")}


def test_four_steps_promote_nothing_and_say_why(cold, store):
    """Four steps of training cannot beat step 0 beyond the noise: the gate must not pretend."""
    promotion = cold["promotion"]
    assert promotion["promoted"] is None
    assert promotion["reason"].startswith("no checkpoint beats the") and "95% CI" in promotion["reason"]
    manifest = ArtifactStore(store).manifest("evaluation", cold["stages"]["evaluation"]["version"])
    assert manifest["details"]["promoted"] is None and manifest["details"]["promotion"] == promotion
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def final_state():
        async with get_client() as client:
            return (await client.read_flow_run(manifest["flow_run_id"])).state

    state = run_coro_as_sync(final_state())
    assert state.type.value == "COMPLETED" and state.message == promotion["reason"], "the UI shows why"


def test_second_run_does_no_stage_work(cold, run, store):
    before = versions(store)
    again = run()
    assert states(again) == {"documents": "Completed", **{s: "Cached" for s in STAGES[1:]}}
    assert {s: v["version"] for s, v in again["stages"].items()} == {s: v["version"] for s, v in cold["stages"].items()}
    assert versions(store) == before, "an unchanged run must publish nothing"


def test_changed_training_parameter_reruns_only_training_and_evaluation(cold, run, store):
    changed = run(**{"training.learning_rate": 0.001})
    assert states(changed) == {
        "documents": "Completed", "images": "Cached", "features": "Cached", "dataset": "Cached", "model": "Cached",
        "checkpoints": "Completed", "evaluation": "Completed", "export": "Completed",
    }
    for stage in ("checkpoints", "evaluation", "export"):
        assert changed["stages"][stage]["version"] != cold["stages"][stage]["version"]
        assert len(versions(store)[stage]) >= 2


def test_deleted_artifact_is_recomputed_not_trusted_from_cache(cold, run, store):
    version = cold["stages"]["dataset"]["version"]
    shutil.rmtree(store / "dataset" / version)
    again = run()
    assert states(again)["dataset"] == "Completed"
    assert again["stages"]["dataset"]["version"] == version
    assert ArtifactStore(store).exists("dataset", version)
    assert states(again)["model"] == "Cached", "same dataset version: downstream stays cached"


def test_a_user_set_is_scored_beside_the_built_in_ones_and_editing_it_reruns_only_evaluation(cold, run, tmp_path):
    quiz = tmp_path / "lore_quiz.jsonl"
    quiz.write_text('{"question": "Which village does Gaara lead?", "choices": ["Sunagakure", "Konohagakure"], "answer": 0}\n'
                    '{"question": "Who taught Team 7?", "choices": ["Might Guy", "Kakashi Hatake"], "answer": "Kakashi Hatake"}\n')
    first = run(**{"evaluation.sets": [str(quiz)]})
    assert states(first)["evaluation"] == "Completed" and states(first)["checkpoints"] == "Cached"
    rows = [r for r in first["evaluation"] if r["set"] == "lore_quiz"]
    assert [r["n"] for r in rows] == [2, 2, 2]
    assert first["baselines"]["lore_quiz"]["always_first"]["value"] == 0.5
    quiz.write_text(quiz.read_text().replace("Might Guy", "Jiraiya"))
    edited = run(**{"evaluation.sets": [str(quiz)]})
    assert {s for s, state in states(edited).items() if state == "Completed"} == {"documents", "evaluation"}, \
        "the promotion did not change, so neither does the export"
    assert edited["stages"]["evaluation"]["version"] != first["stages"]["evaluation"]["version"]


def test_a_broken_user_set_fails_before_any_work_naming_file_and_item(prefect_server, samples, store, tmp_path):
    from loretune.dataset.evalsets import EvalSetError
    from loretune.flows.finetune import finetune

    quiz = tmp_path / "broken.json"
    quiz.write_text('[{"question": "Who?", "choices": ["A", "B"], "answer": 5}]')
    before = versions(store)
    with pytest.raises(EvalSetError, match=r"broken\.json: item 1: 'answer' index 5 is out of range"):
        finetune(overrides={"store": str(store), "evaluation.sets": [str(quiz)]}, sample_sources=samples.base_url)
    assert versions(store) == before


def test_a_broken_open_set_or_an_unknown_gate_set_fails_before_any_work(prefect_server, samples, store, tmp_path):
    from loretune.dataset.evalsets import EvalSetError
    from loretune.flows.finetune import finetune

    spoken = tmp_path / "teachers.jsonl"
    spoken.write_text('{"question": "Who taught Gaara?", "reference": ""}\n')
    before = versions(store)
    with pytest.raises(EvalSetError, match=r"teachers\.jsonl: item 1: 'reference' must be a non-empty string"):
        finetune(overrides={"store": str(store), "evaluation.open_sets": [str(spoken)]}, sample_sources=samples.base_url)
    with pytest.raises(EvalSetError, match=r"no open set named 'quiz_open'"):
        finetune(overrides={"store": str(store), "evaluation.promote.open": [{"set": "quiz_open", "metric": "rougeL"}]},
                 sample_sources=samples.base_url)
    assert versions(store) == before


def test_stage_artifacts_appear_in_prefect_under_stable_keys(cold):
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def by_key(key):
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    for key, kind in [("naruto-documents", "markdown"), ("naruto-dataset", "markdown"),
                      ("naruto-evaluation", "table"), ("naruto-evaluation-plot", "markdown"), ("naruto-run", "table"),
                      ("naruto-promoted", "markdown"), ("naruto-training", "progress"),
                      ("naruto-loss-curve", "markdown")]:
        found = run_coro_as_sync(by_key(key))
        assert found, f"no Prefect artifact {key}"
        assert found[0].type == kind
    plot = run_coro_as_sync(by_key("naruto-evaluation-plot"))[0]
    assert "data:image/png;base64," in plot.data
    assert "no checkpoint beats the base" in run_coro_as_sync(by_key("naruto-promoted"))[0].data
    spoken = json.loads(run_coro_as_sync(by_key("naruto-generation"))[0].data)
    assert {"facts_open", "prose_open"} <= {row["set"] for row in spoken} and "rougeL_stderr" in spoken[0]
    assert "data:image/png;base64," in run_coro_as_sync(by_key("naruto-generation-rougel"))[0].data
    assert run_coro_as_sync(by_key("naruto-training"))[0].data == 100.0, "the bar reaches the last step"
    assert "data:image/png;base64," in run_coro_as_sync(by_key("naruto-loss-curve"))[0].data
    assert "more_common" in run_coro_as_sync(by_key("naruto-dataset"))[0].data, "the dataset shows its baselines"
    table = json.loads(run_coro_as_sync(by_key("naruto-evaluation"))[0].data)
    assert {"baseline: more_common", "base", "checkpoint-4"} <= {row["checkpoint"] for row in table}


def test_bad_config_key_is_one_clear_error(prefect_server, samples, store):
    from loretune.flows.finetune import finetune

    with pytest.raises(ConfigError) as error:
        finetune(overrides={"store": str(store), "training.max_stepz": 3}, sample_sources=samples.base_url)
    assert "training.max_stepz: unknown key" in str(error.value)
    assert "naruto.yaml" in str(error.value)


def test_report_prints_a_flow_runs_evaluation_table(cold, store):
    from typer.testing import CliRunner

    from loretune.flows.cli import app

    flow_run_id = ArtifactStore(store).manifest("evaluation", cold["stages"]["evaluation"]["version"])["flow_run_id"]
    result = CliRunner().invoke(app, ["report", "--flow-run", flow_run_id])
    assert result.exit_code == 0, result.output
    assert cold["stages"]["evaluation"]["version"] in result.output
    lines = [line.split() for line in result.output.splitlines()]
    binary = [["0", "base"], ["2", "checkpoint-2"], ["4", "checkpoint-4"]] * 3
    spoken = [["0", "base", "greedy"], ["0", "base", "sample_t0.7"], ["2", "checkpoint-2", "greedy"],
              ["2", "checkpoint-2", "sample_t0.7"], ["4", "checkpoint-4", "greedy"], ["4", "checkpoint-4", "sample_t0.7"]]
    rows = [line for line in lines if line and line[0] in {"0", "2", "4"}]
    assert [r[:2] for r in rows[:9]] == binary and [r[:3] for r in rows[9:]] == spoken * 2
    assert "set facts (n=200" in result.output, result.output
    more_common = float(re.search(r"set facts .*more_common ([0-9.]+)", result.output).group(1))
    assert 0.43 <= more_common <= 0.57, f"the frequency guess stays near chance on a balanced set: {more_common}"
    assert "open set facts_open (n=4)" in result.output and "open set prose_open (n=4)" in result.output
    assert "promoted: none" in result.output


def test_documents_manifest_says_how_each_source_did(cold, store):
    manifest = ArtifactStore(store).manifest("documents", cold["stages"]["documents"]["version"])
    fandom = manifest["sources"]["fandom"]
    assert fandom["status"] == "ok" and fandom["error"] is None
    assert fandom["documents"] == manifest["counts"]["fandom_documents"] == 30
    assert manifest["counts"]["documents"] == sum(s["documents"] for s in manifest["sources"].values())
    assert fandom["stats"]["revisions_requests"] == 1 and fandom["stats"]["titles_per_revisions_request"] == [32]
    assert fandom["requests"] >= 5 and fandom["bytes"] > 0


def test_every_sample_source_contributes_documents(cold, store):
    manifest = ArtifactStore(store).manifest("documents", cold["stages"]["documents"]["version"])
    statuses = {name: s["status"] for name, s in manifest["sources"].items()}
    assert statuses == {"fandom": "ok", "reddit": "ok", "youtube": "ok", "sportskeeda": "ok"}, \
        "sample mode brings the sample server's Reddit credentials"
    assert manifest["sources"]["reddit"]["documents"] == 6
    assert manifest["sources"]["youtube"]["documents"] == 3 and manifest["sources"]["sportskeeda"]["documents"] == 6


def test_nothing_promoted_exports_nothing_and_says_so(cold, store):
    manifest = ArtifactStore(store).manifest("export", cold["stages"]["export"]["version"])
    assert manifest["details"]["exported"] is False
    assert "promoted no checkpoint" in manifest["details"]["reason"]
    from loretune.chat.catalogue import list_models

    (base,) = list_models(store)
    assert base.kind == "base", "the chat UI offers the base alone"
    step0 = next(r for r in cold["evaluation"] if r["set"] == "facts" and r["step"] == 0)
    assert f"facts acc {step0['acc']:.3f} ± {step0['acc_stderr']:.3f}" in base.label, "labelled with its step-0 score"


def test_the_last_checkpoint_exports_as_adapter_and_merged_and_says_why_the_tiny_model_has_no_gguf(cold, run, store):
    result = run(**{"export.checkpoint": "last"})
    assert {s for s, state in states(result).items() if state == "Completed"} == {"documents", "export"}
    folder = store / "export" / result["stages"]["export"]["version"]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["details"]["formats"] == ["adapter", "merged"]
    assert "tiny model's tokenizer" in manifest["details"]["gguf_skipped"]
    assert {p.name for p in folder.iterdir()} >= {"adapter", "merged", "projector", "parity.json", "export.json"}
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] and parity["summary"]["worst_nmse"]["merged_vs_adapter"] < 1e-3
    info = json.loads((folder / "export.json").read_text())
    assert info["checkpoint"] == "checkpoint-4" and info["promoted"] is False and info["score"]["set"] == "facts"
    from loretune.chat.catalogue import list_models

    merged = [m for m in list_models(store) if m.kind == "merged"]
    assert merged and "checkpoint-4" in merged[0].label and "facts acc" in merged[0].label and merged[0].accepts_images
