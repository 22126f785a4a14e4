"""The `loretune` command's own behaviour (the flows it runs are tested in test_flow.py)."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from loretune.flows.cli import app
from loretune.store import ArtifactStore

runner = CliRunner()


def test_bad_config_key_fails_before_any_work_with_the_key_and_file_named(tmp_path):
    result = runner.invoke(app, ["run", "--store", str(tmp_path), "--set", "training.max_stepz=3"])
    assert result.exit_code == 2
    assert "training.max_stepz: unknown key" in result.output
    assert "deployments/naruto.yaml" in result.output
    assert not any(tmp_path.iterdir()), "nothing may be written for a rejected config"


def test_ill_typed_set_value_names_key_and_value(tmp_path):
    result = runner.invoke(app, ["ingest", "--store", str(tmp_path), "--set", "training.max_steps=lots"])
    assert result.exit_code == 2
    assert "training.max_steps" in result.output and "'lots'" in result.output


def test_a_sweep_grid_with_a_bad_point_fails_before_any_work_naming_it(tmp_path):
    result = runner.invoke(app, ["sweep", "--store", str(tmp_path), "--grid", "{training.lora.r: [8, many]}"])
    assert result.exit_code == 2
    assert "--grid" in result.output and "training.lora.r" in result.output and "'many'" in result.output
    assert not any(tmp_path.iterdir()), "nothing may be written for a rejected grid"
    not_a_grid = runner.invoke(app, ["sweep", "--store", str(tmp_path), "--grid", "training.lora.r=8"])
    assert not_a_grid.exit_code == 2 and "mapping of dotted config keys to lists" in not_a_grid.output


def test_store_ls_lists_versions_with_sizes(tmp_path):
    store = ArtifactStore(tmp_path)
    store.publish("dataset", "abc123", lambda out: (out / "data.txt").write_text("x" * 2048) and None, {})
    result = runner.invoke(app, ["store", "ls", "--store", str(tmp_path)])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("dataset"))
    assert "abc123" in row and "2.0 KB" in row


def test_python_dash_m_loretune_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "loretune", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("run", "ingest", "store", "report"):
        assert command in result.stdout
