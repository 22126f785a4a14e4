"""Resumable scratch: half-written checkpoints never block a retry, and abandoned scratch goes."""

from __future__ import annotations

import json
import subprocess
import sys

from loretune.model.checkpoints import list_checkpoints
from loretune.training import scratch
from loretune.training.sft import discard_incomplete


def checkpoint(folder, step: int, complete: bool) -> None:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"half" if not complete else b"whole")
    if complete:
        (path / "trainer_state.json").write_text("{}")


def test_a_checkpoint_cut_short_by_a_kill_is_not_resumed_from_and_is_removed(tmp_path):
    checkpoint(tmp_path, 2, complete=True)
    checkpoint(tmp_path, 4, complete=False)  # killed while saving: no trainer_state.json yet
    assert [c.step for c in list_checkpoints(tmp_path)] == [2]
    assert discard_incomplete(tmp_path) == ["checkpoint-4"]
    assert not (tmp_path / "checkpoint-4").exists() and (tmp_path / "checkpoint-2").exists()


def test_scratch_of_other_versions_goes_unless_its_owner_is_alive(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    keep, dead, alive, unowned = (tmp_path / f"checkpoints-{name}" for name in ("keep", "dead", "alive", "unowned"))
    scratch.claim(keep)
    scratch.claim(alive)  # this test process: alive
    dead.mkdir()
    (dead / scratch.OWNER_FILE).write_text(json.dumps({"pid": int(finished.stdout), "host": __import__("socket").gethostname()}))
    unowned.mkdir()
    assert scratch.clean_others(keep) == ["checkpoints-dead", "checkpoints-unowned"]
    assert keep.exists() and alive.exists() and not dead.exists() and not unowned.exists()
