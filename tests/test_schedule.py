"""The nightly schedule fires: a real `prefect server start` turns the cron of deployments/prefect.yaml
into scheduled flow runs.

Prefect 3.8's scheduler fails on SQLAlchemy 2.1 (every loop logs "Can't evaluate bulk DML statement;
please supply a bulk_dml decorated function" from `_insert_scheduled_flow_runs`), so no scheduled run
is ever created and the nightly refresh never starts; pyproject.toml pins SQLAlchemy below 2.1.
Prefect's own test harness runs an ephemeral server without the scheduler, so this test starts the
real server, on a free port, in a throwaway PREFECT_HOME, and stops its whole process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
PREFECT = Path(sys.executable).with_name("prefect")


def nightly_schedules() -> list[dict]:
    """refresh/naruto's schedules in deployments/prefect.yaml, as the REST API takes them."""
    (refresh,) = [d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
                  if d["name"] == "naruto" and d["entrypoint"].startswith("flows/refresh.py")]
    schedules = []
    for s in refresh["schedules"]:
        s = dict(s)
        active = s.pop("active", True)
        schedules.append({"schedule": s, "active": active})
    assert schedules, "refresh/naruto has no schedule"
    return schedules


def wait_healthy(api: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"prefect server exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy in {timeout:.0f}s:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
def test_the_scheduler_creates_the_nightly_runs(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tmp_path / "prefect"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "LORETUNE_"))}  # never a developer's server or database
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="2",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
    )
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_healthy(api, proc, log, timeout=120)
        with httpx.Client(base_url=api, timeout=30) as client:
            flow = client.post("/flows/", json={"name": "refresh"})
            flow.raise_for_status()
            deadline = time.monotonic() + 60
            while True:  # healthy is not yet ready: the first writes may get 503 while services start
                deployment = client.post("/deployments/", json={
                    "name": "naruto", "flow_id": flow.json()["id"], "schedules": nightly_schedules(),
                })
                if deployment.status_code != 503 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            deployment.raise_for_status()
            deployment_id = deployment.json()["id"]

            runs: list[dict] = []
            deadline = time.monotonic() + 60
            while not runs and time.monotonic() < deadline:
                time.sleep(1)
                found = client.post("/flow_runs/filter", json={
                    "deployments": {"id": {"any_": [deployment_id]}},
                    "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                })
                found.raise_for_status()
                runs = found.json()
        server_log = log.read_text()
        assert runs, f"the scheduler created no run in 60s; server log:\n{server_log[-4000:]}"
        assert all(run["state"]["type"] == "SCHEDULED" for run in runs)
        assert "Can't evaluate bulk DML statement" not in server_log
    finally:  # the whole group: the server's own workers and services too, even if it died first
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; give the rest of its group a moment, then check again
            time.sleep(0.5)
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
