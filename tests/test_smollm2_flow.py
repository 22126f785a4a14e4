"""The packaged real model through the whole flow, as a user runs it: the model stage, a few
training steps, SIGKILL during training, a resume to the same result, evaluation and the before /
after answers. Slow (minutes): SmolLM2-135M on two CPU cores."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = ["model.base=smollm2-135m-instruct", "training.lora.modules_to_save=[]", "training.max_steps=4",
             "training.save_steps=2", "training.retention=0", "training.batch_size=2", "training.max_length=128", "training.warmup_ratio=0",
             "training.learning_rate=0.001", "dataset.val_fraction=0.02", "evaluation.max_items=8",
             "evaluation.probe_questions=[\"Who is Naruto Uzumaki?\"]", "evaluation.max_open_items=3",
             "evaluation.decoding=[{name: greedy, max_new_tokens: 12}]"]


@pytest.fixture(scope="module")
def api_url(prefect_server) -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def command(store: Path, samples) -> list[str]:
    sets = [arg for override in OVERRIDES for arg in ("--set", override)]
    return [sys.executable, "-m", "loretune", "run", "--sample-sources", samples.base_url, "--store", str(store), *sets]


def environment(home: Path, api_url: str) -> dict[str, str]:
    return {**os.environ, "LORETUNE_HOME": str(home), "PREFECT_HOME": str(home / "prefect"), "PREFECT_API_URL": api_url}


def run_to_the_end(store: Path, home: Path, samples, api_url: str) -> str:
    done = subprocess.run(command(store, samples), cwd=ROOT, env=environment(home, api_url), capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def kill_after_first_checkpoint(store: Path, home: Path, samples, api_url: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    output = home / "killed-run.log"  # kept so that a run that dies early says why
    with output.open("wb") as sink:
        process = subprocess.Popen(command(store, samples), cwd=ROOT, env=environment(home, api_url),
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 900
    try:
        while not list((home / "work").glob("checkpoints-*/checkpoint-2/trainer_state.json")):
            if process.poll() is not None:
                tail = output.read_text(errors="replace")[-3000:]
                pytest.fail(f"the run ended (exit {process.returncode}) before its first checkpoint:\n{tail}")
            assert time.monotonic() < deadline, "no checkpoint within 15 minutes"
            time.sleep(0.5)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def published(store: Path, stage: str) -> Path:
    (version,) = [p for p in (store / stage).iterdir() if p.is_dir()]
    return version


def test_smollm2_trains_is_killed_resumes_to_the_same_result_and_is_evaluated(tmp_path, samples, api_url):
    store, home = tmp_path / "store", tmp_path / "home"
    kill_after_first_checkpoint(store, home, samples, api_url)
    assert not (store / "checkpoints").exists(), "nothing is published before training finishes"
    (scratch,) = (home / "work").glob("checkpoints-*")
    half = scratch / "checkpoint-4"  # as if a second kill had come in the middle of saving step 4
    half.mkdir(exist_ok=True)
    (half / "adapter_model.safetensors").write_bytes(b"torn")
    (home / "work" / "checkpoints-0000000000000000").mkdir()  # another version's leftover scratch

    log = run_to_the_end(store, home, samples, api_url)
    assert "removed checkpoint-4, left half-written" in log
    assert "resuming from checkpoint-2 (step 2 of 4)" in log
    assert "removed checkpoints-0000000000000000" in log
    assert not (home / "work").exists() or not list((home / "work").glob("checkpoints-*")), "scratch goes once published"

    model = published(store, "model")
    provenance = json.loads((model / "loretune_model.json").read_text())
    assert provenance["kind"] == "package" and provenance["licence"] == "Apache-2.0"
    assert len(provenance["sha256"]) == 64 and provenance["upstream"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "loretune_chat.json"} <= {p.name for p in model.iterdir()}
    assert "<|im_start|>" in (model / "tokenizer_config.json").read_text() + "".join(
        p.read_text() for p in model.glob("*.jinja")), "ChatML travels with the model"
    for path in store.rglob("*.json"):
        assert str(tmp_path) not in path.read_text(), f"{path} names a machine path"

    evaluation = published(store, "evaluation")
    rows = [line.split(",") for line in (evaluation / "evaluation.csv").read_text().splitlines()[1:]]
    assert sorted({(int(r[0]), r[2]) for r in rows}) == [(s, n) for s in (0, 2, 4) for n in ("facts", "pictures", "synthetic")]
    compared = json.loads((evaluation / "before_after.json").read_text())
    (answer,) = compared["answers"]
    assert answer["question"] == "Who is Naruto Uzumaki?" and answer["base"], "the base model answers in words"

    resumed = load_file(str(published(store, "checkpoints") / "checkpoint-4" / "adapter_model.safetensors"))
    shutil.rmtree(published(store, "checkpoints"))
    log = run_to_the_end(store, home, samples, api_url)  # the same version, uninterrupted this time
    assert re.search(r"Task run 'evaluate-\w+' - Finished in state Cached", log), "same checkpoints: evaluation is cached"
    straight = load_file(str(published(store, "checkpoints") / "checkpoint-4" / "adapter_model.safetensors"))
    assert resumed.keys() == straight.keys()
    for key in resumed:
        assert (resumed[key] - straight[key]).abs().max().item() <= 1e-6, f"{key}: resume changed the result"
