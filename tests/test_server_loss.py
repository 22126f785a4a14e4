"""The Prefect server going away in the middle of a deployment run (issue 25, item 7).

The slow test drives the local stack as `make demo` does, in a throwaway state folder on free
ports: a finetune/naruto run is started through the deployment, and once it has published a stage
the Prefect server is SIGKILLed. Then: the store must hold only complete artifacts, the flow run's
process must not hang for ever without a server, `stack up` must bring a new server up on the same
database (no stale pid file in the way), and a second run must complete, reusing (Cached, same
version) every stage the first run had published.

What it observed is printed (`pytest -s` shows it): the interrupted run's state, the flow-run
process's fate and the messages the worker log has about it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from loretune import stack
from test_deployment import ROOT, SHORT_RUN, flow_name, free_port, run_stack

PREFECT = str(Path(sys.executable).with_name("prefect"))
# Bounds: the run's first stages publish within a few minutes on 2 busy cores; a flow-run process
# that outlives its server this long is hanging.
# The deployment test's short run, without the export: what is interrupted here is the run's first stages.
RUN = {**SHORT_RUN, "export.enabled": False}
FIRST_STAGE_S = 600
ORPHAN_S = 420
SECOND_RUN_S = 1200


def _api(env: dict, path: str, payload: dict | None = None):
    url = f"http://127.0.0.1:{env['LORETUNE_PREFECT_PORT']}/api{path}"
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def _prefect_env(env: dict) -> dict:
    home = Path(env["LORETUNE_HOME"])
    return {**env, "PREFECT_API_URL": f"http://127.0.0.1:{env['LORETUNE_PREFECT_PORT']}/api",
            "PREFECT_HOME": str(home / "prefect")}


def _published(store: Path) -> dict[str, set[str]]:
    """{stage: {versions}} of every committed artifact (a version folder with a manifest)."""
    out: dict[str, set[str]] = {}
    for manifest in store.glob("*/*/manifest.json"):
        if not manifest.parent.parent.name.startswith("."):
            out.setdefault(manifest.parent.parent.name, set()).add(manifest.parent.name)
    return out


def _check_store_consistent(store: Path) -> list[str]:
    """Every <stage>/<version>/ is a complete artifact: a manifest whose file count matches the
    folder. Returns what .scratch holds (leftovers of builds that were cut off)."""
    for stage_dir in (p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version_dir in (p for p in stage_dir.iterdir() if p.is_dir()):
            manifest_path = version_dir / "manifest.json"
            assert manifest_path.is_file(), f"half-written artifact without a manifest: {version_dir}"
            manifest = json.loads(manifest_path.read_text())
            files = [p for p in version_dir.rglob("*") if p.is_file() and p != manifest_path]
            assert len(files) == manifest["counts"]["files"], (version_dir, len(files), manifest["counts"])
    scratch = store / ".scratch"
    return sorted(p.name for p in scratch.iterdir()) if scratch.exists() else []


def _flow_run_pids(flow_run_id: str) -> list[int]:
    """Processes whose environment names this flow run (the process worker sets PREFECT__FLOW_RUN_ID)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _state(env: dict, flow_run_id: str) -> dict:
    return (_api(env, f"/flow_runs/{flow_run_id}") or {}).get("state") or {}


def _ledger(env: dict, flow_run_id: str) -> dict[str, dict]:
    artifacts = _api(env, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]},
                                                              "type": {"any_": ["table"]}}}) or []
    for artifact in artifacts:
        rows = artifact["data"] if isinstance(artifact["data"], list) else json.loads(artifact["data"])
        if rows and "stage" in rows[0] and "version" in rows[0]:
            return {row["stage"]: row for row in rows}
    return {}


@pytest.fixture
def server_loss_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LORETUNE_DATABASE"))}
    env.update(LORETUNE_HOME=str(tmp_path / "home"), LORETUNE_PREFECT_PORT=str(free_port()),
               LORETUNE_SAMPLES_PORT=str(free_port()), LORETUNE_POSTGRES_PORT=str(free_port()),
               # One retry of each API call instead of Prefect's five with back-off: the orphaned flow-run
               # process then gives up in about a minute instead of about four (measured), which is the
               # same path, sooner. The worker and flow runs inherit it through the stack's environment.
               PREFECT_CLIENT_MAX_RETRIES="1")
    try:
        yield env
    finally:
        down = run_stack(env, "down", timeout=120)
        print(down.stdout, down.stderr)


@pytest.mark.slow
def test_a_run_survives_the_prefect_server_going_away(server_loss_env):
    flow_name("flows/finetune.py:finetune")
    env = server_loss_env
    home = Path(env["LORETUNE_HOME"])
    store = home / "store"
    penv = _prefect_env(env)
    t0 = time.monotonic()

    def note(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {message}", flush=True)

    up = run_stack(env, "up", timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr
    note("stack up")

    started = subprocess.run([PREFECT, "deployment", "run", stack.DEMO_DEPLOYMENT, "-p",
                              f"overrides={json.dumps(RUN)}"],
                             cwd=ROOT, env=penv, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)
    note(f"flow run {flow_run_id} created")

    # Running, with at least one stage published.
    deadline = time.monotonic() + FIRST_STAGE_S
    while not (_state(env, flow_run_id).get("type") == "RUNNING" and _published(store)):
        assert time.monotonic() < deadline, (_state(env, flow_run_id), (home / "logs" / "worker.log").read_text()[-4000:])
        assert _state(env, flow_run_id).get("type") not in ("COMPLETED", "FAILED", "CRASHED"), _state(env, flow_run_id)
        time.sleep(1)
    before = _published(store)
    runners = _flow_run_pids(flow_run_id)
    note(f"running; published {sorted(before)}; flow-run processes {runners}")
    assert runners, "the flow run's process was not found"

    # The server goes away: SIGKILL, no chance to clean up.
    server_pid = int((home / "run" / "server.pid").read_text())
    os.kill(server_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _api(env, "/health") is not None:
        assert time.monotonic() < deadline, "the port still answers after the server process was killed"
        time.sleep(0.5)
    note(f"server pid {server_pid} killed; the API no longer answers")

    # The flow-run process: it must end by itself (it cannot report anything any more), not hang.
    deadline = time.monotonic() + ORPHAN_S
    while any(_alive(pid) for pid in runners) and time.monotonic() < deadline:
        time.sleep(2)
    orphan_alive = [pid for pid in runners if _alive(pid)]
    note(f"flow-run processes still alive after the server loss: {orphan_alive}")
    worker_log = (home / "logs" / "worker.log").read_text(errors="replace")
    messages = [line for line in worker_log.splitlines()
                if re.search(r"(?i)error|crash|fail|exception|retry|unable|connect", line)]
    print("worker log lines after the server loss:\n  " + "\n  ".join(messages[-25:]))
    worker_pid = int((home / "run" / "worker.pid").read_text())
    note(f"worker pid {worker_pid} alive: {_alive(worker_pid)}")
    assert not orphan_alive, f"the flow-run process outlived its server by {ORPHAN_S}s: {orphan_alive}"

    scratch = _check_store_consistent(store)
    first = _published(store)  # what the first run published, some of it after its server had gone
    note(f"store consistent; published {sorted(first)} ({sorted(set(first) - set(before))} after the "
         f"server loss); .scratch holds {scratch}")

    # A new server on the same database: the stale pid file must not stand in the way.
    again = run_stack(env, "up", timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"Prefect server .*: started \(pid \d+\)", again.stdout), again.stdout
    note("stack up again:\n    " + "\n    ".join(again.stdout.splitlines()))
    interrupted = _state(env, flow_run_id)
    note(f"the interrupted run, as the new server has it: {interrupted.get('type')} {interrupted.get('name')!r}: "
         f"{interrupted.get('message')!r}")
    # Not COMPLETED: nothing of the run's end can have reached a dead server.
    assert interrupted.get("type") != "COMPLETED", interrupted

    rerun = subprocess.run([PREFECT, "deployment", "run", stack.DEMO_DEPLOYMENT, "--watch", "-p",
                            f"overrides={json.dumps(RUN)}"],
                           cwd=ROOT, env=penv, capture_output=True, text=True, timeout=SECOND_RUN_S)
    second_id = re.search(r"UUID: ([0-9a-f-]{36})", rerun.stdout).group(1)
    second = _state(env, second_id)
    note(f"second run {second_id}: {second.get('type')} {second.get('message')!r}")
    assert second.get("type") == "COMPLETED", (second, rerun.stdout[-3000:],
                                               (home / "logs" / "worker.log").read_text()[-6000:])
    ledger = _ledger(env, second_id)
    note(f"second run's ledger: { {s: (r['version'], r['state']) for s, r in ledger.items()} }")
    # Every stage the first run published, before or after its server went away, is reused: the
    # same version, Cached (or, for documents, which always asks its sources, Completed with
    # nothing new published). A new version here means the interrupted run left something the
    # next one could not trust (or the code changed between the runs: versions fingerprint it).
    for stage_name, versions in first.items():
        assert stage_name in ledger, (stage_name, ledger)
        assert ledger[stage_name]["version"] in versions, (stage_name, versions, ledger[stage_name])
        assert ledger[stage_name]["state"] in ("Cached", "Completed"), (stage_name, ledger[stage_name])
    assert sorted(_published(store)[name] for name in first) == sorted(first[name] for name in first), \
        "a stage the first run published was published again"
    scratch = _check_store_consistent(store)
    note(f"store consistent after the second run; .scratch holds {scratch}")


# --- fast: `up` does not reuse a Prefect server that is broken or another stack's ----------------


class _FakePrefect:
    """Answers /api/health like a Prefect server; the rest as told."""

    def __init__(self, filter_status: int, home: str | None):
        import http.server
        import threading

        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/api/health":
                    self._send(200, True)
                elif self.path == "/api/admin/settings" and fake.home is not None:
                    self._send(200, {"home": fake.home, "api": {}})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/api/flow_runs/filter":
                    self._send(fake.filter_status, [] if fake.filter_status == 200 else {"exception_message": "Internal Server Error"})
                else:
                    self._send(404, {"detail": "Not Found"})

        self.filter_status, self.home = filter_status, home
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("LORETUNE_HOME", str(home))
    monkeypatch.delenv("LORETUNE_DATABASE", raising=False)
    return home


def _up_refuses(home: Path, port: int, monkeypatch) -> str:
    monkeypatch.setenv("LORETUNE_PREFECT_PORT", str(port))
    spawned = []
    monkeypatch.setattr(stack.Stack, "spawn", lambda self, *a, **k: spawned.append(a) or 0)
    with pytest.raises(stack.StackError) as caught:
        stack.Stack().up()
    assert not spawned, "nothing may be started beside a server that is refused"
    return str(caught.value)


def test_up_refuses_a_server_that_answers_health_but_fails_real_requests(fake_home, monkeypatch):
    """The previous session's case: a server from a deleted clone answered HTTP 500; the worker died."""
    with _FakePrefect(500, str(fake_home / "prefect")) as fake:
        message = _up_refuses(fake_home, fake.port, monkeypatch)
    assert f"127.0.0.1:{fake.port}" in message and "HTTP 500" in message, message
    assert f"port {fake.port}" in message and "LORETUNE_PREFECT_PORT" in message, message


def test_up_refuses_a_server_of_another_state_folder(fake_home, monkeypatch, tmp_path):
    elsewhere = tmp_path / "deleted-clone" / ".loretune" / "prefect"
    with _FakePrefect(200, str(elsewhere)) as fake:
        message = _up_refuses(fake_home, fake.port, monkeypatch)
    assert "not this stack's" in message and str(elsewhere) in message and str(fake_home / "prefect") in message, message
    with _FakePrefect(200, None) as fake:  # says nothing of its settings: not known to be ours
        assert "PREFECT_HOME is unknown" in _up_refuses(fake_home, fake.port, monkeypatch)


def test_a_healthy_server_of_this_state_folder_is_reused(fake_home, monkeypatch, capsys):
    with _FakePrefect(200, str(fake_home / "prefect")) as fake:
        monkeypatch.setenv("LORETUNE_PREFECT_PORT", str(fake.port))
        s = stack.Stack()
        assert s.prefect_problem() is None
        s.start_server("server", "Prefect server", ["false"], s.prefect_healthy, timeout=5, vet=s.prefect_problem)
    assert "reusing the one already up (not started by loretune" in capsys.readouterr().out


def test_a_stale_server_pid_file_does_not_stop_a_new_server(fake_home, monkeypatch):
    """The server was SIGKILLed: its pid file names a dead process, which is no server of ours."""
    s = stack.Stack()
    s.run_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    s.pid_file("server").write_text(f"{dead.pid}\n")
    s.database_record.write_text("postgres\n")
    assert s.running_pid("server") is None and not s.pid_file("server").exists()
    assert stack.Stack().database == "sqlite"  # the record of a dead server decides nothing
