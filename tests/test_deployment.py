"""The deployment path: deployments/prefect.yaml, and the stack that registers and runs it.

The fast tests read the YAML and the flow sources without importing them (importing a flow pulls
in torch); the slow test drives what `make demo` does, for real, in a throwaway state folder on
free ports, so it never touches a developer's running stack, once on each database the Prefect
server can use (SQLite, the default, and PostgreSQL).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
import yaml

from loretune import postgres, stack
from recipes import QUICK_OPEN, TINY

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
# A few steps, two checkpoints: enough to exercise every stage without a long training run.
SHORT_RUN = {**TINY, **QUICK_OPEN, "training.max_steps": 6, "training.save_steps": 3}


def deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def flow_name(entrypoint: str) -> str:
    """The name Prefect gives the flow at `path:function`, read from the source: the decorator's
    `name=`, else the function name with `_` as `-` (Prefect's default)."""
    path, function = entrypoint.split(":")
    source = ROOT / path
    if not source.exists():
        pytest.skip(f"{path} is not written yet")
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function:
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call):
                    for keyword in decorator.keywords:
                        if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                            return keyword.value.value
            return function.replace("_", "-")
    raise AssertionError(f"{path} has no top-level function {function!r}")


def test_prefect_yaml_defines_every_deployment_on_the_local_pool():
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    assert sorted((d["entrypoint"], d["name"]) for d in spec["deployments"]) == [
        ("flows/compare.py:compare", "naruto"),
        ("flows/finetune.py:finetune", "naruto"),
        ("flows/refresh.py:refresh", "naruto"),
        ("flows/sweep.py:sweep", "naruto"),
    ]
    for deployment in spec["deployments"]:
        assert deployment["work_pool"]["name"] == stack.POOL
        assert deployment["parameters"] == {
            "config": "deployments/naruto.yaml",
            "sample_sources": f"http://127.0.0.1:{stack.DEFAULT_SAMPLES_PORT}",
        }
    # Flow runs must start in the project root, wherever the worker was started.
    assert spec["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $LORETUNE_PROJECT_DIR }}"}}
    ]
    assert not spec.get("build") and not spec.get("push")


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["entrypoint"])
def test_each_entrypoint_exists_and_is_the_flow_the_deployment_is_named_after(deployment):
    """`finetune/naruto` is <flow name>/<deployment name>: the flow's name must match."""
    expected_flow = deployment["entrypoint"].rsplit(":", 1)[1]
    assert flow_name(deployment["entrypoint"]) == expected_flow


def test_refresh_runs_nightly_on_a_cron_with_an_explicit_timezone():
    refresh = next(d for d in deployments() if d["entrypoint"].endswith(":refresh"))
    (schedule,) = refresh["schedules"]
    assert len(schedule["cron"].split()) == 5
    assert schedule["timezone"] in {"UTC", "Europe/Berlin"}
    assert schedule.get("active", True)


def test_finetune_starts_on_the_event_a_refresh_with_a_new_dataset_emits():
    from loretune.flows import refresh

    finetune = next(d for d in deployments() if d["entrypoint"].endswith(":finetune"))
    (trigger,) = finetune["triggers"]
    assert trigger["type"] == "event" and trigger.get("enabled", True)
    assert trigger["expect"] == [refresh.DATASET_EVENT]
    assert trigger["match"] == {"prefect.resource.id": refresh.dataset_resource("naruto")}
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    DeploymentEventTrigger.model_validate(trigger)  # the shape `prefect deploy` reads


def test_finetune_is_not_scheduled():
    finetune = next(d for d in deployments() if d["entrypoint"].endswith(":finetune"))
    assert not finetune.get("schedules")


def test_a_non_default_samples_port_is_deployed_with_matching_sample_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("LORETUNE_HOME", str(tmp_path))
    monkeypatch.setenv("LORETUNE_SAMPLES_PORT", "9911")
    rendered = stack.Stack().deployment_file(PREFECT_YAML)
    assert rendered.parent == tmp_path / "run"
    for deployment in yaml.safe_load(rendered.read_text())["deployments"]:
        assert deployment["parameters"]["sample_sources"] == "http://127.0.0.1:9911"


def test_the_default_port_deploys_the_project_file_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("LORETUNE_HOME", str(tmp_path))
    monkeypatch.delenv("LORETUNE_SAMPLES_PORT", raising=False)
    assert stack.Stack().deployment_file(PREFECT_YAML) == PREFECT_YAML


# --- slow: the real deployment path -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stack(env: dict, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loretune.stack", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def postgres_installed() -> bool:
    try:
        postgres.find_bin_dir()
    except postgres.PostgresError:
        return False
    return True


@pytest.fixture(params=[
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.skipif(
        not postgres_installed(), reason="needs Debian's postgresql (make test installs it)")),
])
def database(request) -> str:
    """The Prefect server's database."""
    return request.param


@pytest.fixture
def stack_env(database, tmp_path):
    """An isolated stack: its own state folder (so its own Prefect DB and store) and free ports,
    on the database the test is parametrised with (LORETUNE_DATABASE is not set: the test says
    --database, as `make demo DB=...` does). Whatever the test started is stopped afterwards,
    however the test ended."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LORETUNE_DATABASE"))}
    home = tmp_path / "home"
    if database == "postgres":
        # PostgreSQL runs as a non-root user, who cannot enter pytest's tmp folders (0700 root).
        home = Path(tempfile.mkdtemp(prefix="loretune-pg-stack-"))
        home.chmod(0o711)
    env.update(
        LORETUNE_HOME=str(home),
        LORETUNE_PREFECT_PORT=str(free_port()),
        LORETUNE_SAMPLES_PORT=str(free_port()),
        LORETUNE_POSTGRES_PORT=str(free_port()),
    )
    try:
        yield env
    finally:
        down = run_stack(env, "down", timeout=120)
        print(down.stdout, down.stderr)
        if database == "postgres":
            postmaster = home / "postgres" / "data" / "postmaster.pid"
            if postmaster.exists():  # `down` failed to stop it: a fast shutdown, by signal
                try:
                    os.kill(int(postmaster.read_text().split()[0]), signal.SIGINT)
                except (ProcessLookupError, ValueError):
                    pass
            shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_demo_runs_finetune_through_the_deployment(stack_env, database):
    flow_name("flows/finetune.py:finetune")  # skips, with the reason, while the flow is missing
    home = Path(stack_env["LORETUNE_HOME"])

    demo = run_stack(stack_env, "demo", "--database", database,
                     "-p", f"overrides={json.dumps(SHORT_RUN)}", timeout=1500)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output[-8000:]
    assert "failed: exit" not in output, output[-8000:]  # the evaluation table was printed
    if database == "postgres":
        assert re.search(r"PostgreSQL 127\.0\.0\.1:\d+: initialised and started", output), output[:3000]
        # The server's connection URL holds the cluster's password: nothing shows it.
        password = (home / "postgres" / "password").read_text().strip()
        assert password not in output
        for log in (home / "logs").glob("*.log"):
            assert password not in log.read_text(errors="replace"), log

    # The run really completed, as the server records it, and it went through the worker.
    flow_run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", output).group(1)
    api = f"http://127.0.0.1:{stack_env['LORETUNE_PREFECT_PORT']}/api"
    with urllib.request.urlopen(f"{api}/flow_runs/{flow_run_id}") as response:
        run = json.load(response)
    assert run["state"]["type"] == "COMPLETED"
    assert run["parameters"]["overrides"] == SHORT_RUN
    assert run["parameters"]["sample_sources"] == f"http://127.0.0.1:{stack_env['LORETUNE_SAMPLES_PORT']}"
    assert run["work_pool_name"] == stack.POOL

    manifests = list((home / "store").glob("*/*/manifest.json"))
    assert manifests, f"no artifacts in {home / 'store'}"

    # Training takes the GPU's one slot: the stack made the tag's limit, and the train task carried the tag.
    with urllib.request.urlopen(f"{api}/concurrency_limits/tag/{stack.GPU_TAG}") as response:
        assert json.load(response)["concurrency_limit"] == stack.GPU_SLOTS == 1
    request = urllib.request.Request(f"{api}/task_runs/filter", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"flow_runs": {"id": {"any_": [flow_run_id]}}}).encode())
    with urllib.request.urlopen(request) as response:
        task_runs = json.load(response)
    assert [stack.GPU_TAG in t["tags"] for t in task_runs if t["name"].startswith("train")] == [True], task_runs

    # New lore, new model: the finetune deployment's trigger is registered as an automation.
    request = urllib.request.Request(f"{api}/automations/filter", method="POST", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        automations = json.load(response)
    assert [a["trigger"]["expect"] for a in automations if a["enabled"]] == [["loretune.dataset.published"]], automations
    assert automations[0]["actions"][0]["type"] == "run-deployment"

    # The server runs on the database asked for, and says so.
    status = run_stack(stack_env, "status", timeout=60)
    assert status.returncode == 0, status.stdout
    assert re.search(rf"^database +{database} ", status.stdout, re.M), status.stdout

    # Starting again, with no --database, reuses all three (and PostgreSQL) on the server's database
    # instead of starting second copies.
    again = run_stack(stack_env, "up", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("reusing") == (4 if database == "postgres" else 3), again.stdout
    assert f"concurrency limit {stack.GPU_TAG!r}: exists" in again.stdout, again.stdout

    down = run_stack(stack_env, "down", timeout=120)
    assert down.stdout.count("stopped (process group") == 3, down.stdout
    assert ("PostgreSQL" in down.stdout) == (database == "postgres"), down.stdout
    status = run_stack(stack_env, "status", timeout=60)
    assert status.returncode == 3, status.stdout
    assert "PostgreSQL" not in status.stdout, status.stdout
