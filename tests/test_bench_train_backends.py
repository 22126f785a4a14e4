"""bench/train_backends.py on a CPU: the hf backend trains the tiny model end to end in a worker process,
unsloth is refused with a clear error without sinking the hf row, unsloth is imported before transformers
in its worker, and the table's ratios. The real comparison needs a CUDA GPU; this keeps the script working."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "train_backends.py"
SMALL = ["--models", "tiny", "--quant", "bf16", "--steps", "3", "--warmup", "1", "--seq-len", "64", "--batch", "2",
         "--device", "cpu"]


def bench(work: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SCRIPT), "--work", str(work), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    done = bench(work, *SMALL, "--backends", "hf", "--out", str(work / "r.json"))
    return work, done.stdout, json.loads((work / "r.json").read_text())


def test_hf_trains_the_tiny_model_on_cpu(hf_run):
    work, stdout, result = hf_run
    [row] = result["results"]
    assert (row["model"], row["quant"], row["backend"]) == ("tiny", "bf16", "hf")
    assert "error" not in row, row
    assert row["tokens_per_s"] > 0
    assert len(row["losses"]) == len(row["step_seconds"]) == 4  # the warm-up step is recorded, not timed
    assert all(math.isfinite(x) for x in row["losses"]) and row["losses"][0] > 0
    assert row["loss_first"] == row["losses"][0] and row["loss_last"] == row["losses"][-1]
    assert row["tokens_per_s_vs_hf"] == 1.0 and row["max_abs_loss_diff_vs_hf"] == 0.0
    assert row["trainable_parameters"] > 0 and row["peak_vram_gib"] is None
    assert "| tiny | bf16 | hf |" in stdout and "| tiny | bf16 | hf |" in result["table"]
    assert result["lora"]["r"] > 0 and result["versions"]["torch"] and result["gpu"] == "cpu"
    assert (work / "tiny" / "model.safetensors").exists() and (work / "tiny" / "tokenizer.json").exists()
    config = json.loads((work / "tiny" / "config.json").read_text())
    assert config["hidden_size"] == 64 and config["pad_token_id"] is not None


def test_unsloth_on_cpu_is_a_clear_error_beside_the_hf_row(hf_run):
    work = hf_run[0]  # built models and data are reused
    done = bench(work, *SMALL, "--backends", "hf,unsloth", "--out", str(work / "both.json"))
    rows = {r["backend"]: r for r in json.loads((work / "both.json").read_text())["results"]}
    assert "error" not in rows["hf"] and rows["hf"]["tokens_per_s"] > 0
    assert "unsloth needs a CUDA GPU" in rows["unsloth"]["error"]
    assert "Traceback" not in done.stdout.split("| model |")[-1]  # the table says why, no traceback
    assert "| tiny | bf16 | unsloth | error: unsloth needs a CUDA GPU" in done.stdout


def test_unsloth_worker_imports_unsloth_before_transformers(hf_run, tmp_path):
    """A stand-in unsloth records what was imported before it; without CUDA the worker then stops, clearly."""
    (tmp_path / "unsloth").mkdir()
    (tmp_path / "unsloth" / "__init__.py").write_text(
        "import json, os, sys\n"
        "json.dump(sorted(m for m in ('transformers', 'peft', 'trl', 'torch') if m in sys.modules),\n"
        "          open(os.environ['STUB_LOG'], 'w'))\n")
    work = hf_run[0]
    data = next(work.glob("data-*.pt"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
           "STUB_LOG": str(tmp_path / "before.json")}
    done = subprocess.run([sys.executable, str(SCRIPT), "--worker", "--backend", "unsloth", "--work", str(work),
                           "--data", str(data), "--models", "tiny", "--quant", "bf16,4bit", "--device", "cuda",
                           "--model-folder", f"tiny={work / 'tiny'}"], capture_output=True, text=True, timeout=120,
                          cwd=work, env=env)
    assert json.loads((tmp_path / "before.json").read_text()) == []
    rows = [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert [(r["quant"], r["error"]) for r in rows] == [("bf16", "unsloth needs a CUDA GPU and torch sees none"),
                                                        ("4bit", "unsloth needs a CUDA GPU and torch sees none")]
    assert done.returncode == 1


def test_ratios_and_loss_gap_against_hf():
    spec = importlib.util.spec_from_file_location("train_backends", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hf = {"model": "1b", "quant": "4bit", "backend": "hf", "tokens_per_s": 1000.0, "peak_vram_gib": 8.0,
          "losses": [10.0, 9.0, 8.0]}
    fast = {**hf, "backend": "unsloth", "tokens_per_s": 2000.0, "peak_vram_gib": 2.0, "losses": [10.0, 9.5, 8.25]}
    broken = {"model": "smollm2", "quant": "4bit", "backend": "unsloth", "error": "OOM | out of memory\nat step 3"}
    table = module.compare([hf, fast, broken])
    assert (fast["tokens_per_s_vs_hf"], fast["peak_vram_vs_hf"], fast["max_abs_loss_diff_vs_hf"]) == (2.0, 0.25, 0.5)
    assert "| 1b | 4bit | unsloth | 2000 | 2.00 | 10.0000 | 8.2500 | 0.5000 | 2.00 | 0.25 |" in table
    assert "| smollm2 | 4bit | unsloth | error: OOM / out of memory at step 3 |" in table
    assert all(line.count("|") == 11 for line in table.splitlines())
