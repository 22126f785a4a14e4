"""The local stack: a Prefect server, the sample sources server and a process worker.

    python -m loretune.stack up       start what is not running yet, register the deployments
    python -m loretune.stack status   say what is running
    python -m loretune.stack down     stop what `up` started
    python -m loretune.stack demo     `up`, then run finetune/naruto and report on it

`up` and `demo` take --database sqlite|postgres (or $LORETUNE_DATABASE): the Prefect server's
database. SQLite is the default; postgres runs a PostgreSQL cluster under the state folder
(loretune/postgres.py) and points the server at it through asyncpg. `down` stops it too.

This is Python rather than Makefile shell because the stack has to be safe to start twice (a
healthy server is reused, never duplicated; a Prefect server on the port that is another state
folder's, or that fails real requests, is refused, saying what to do), has to stop exactly what
it started (pid files, whole process groups) and is driven, on its own ports and state folder,
by the slow deployment test. Prefect is driven through its CLI, as a user would drive it, so that
is the path the test covers; its REST API is only read, to see whether things are up (and the
server ours) and how a run ended.

Everything lives in the state folder ($LORETUNE_HOME, default <project>/.loretune): prefect/
(PREFECT_HOME, the SQLite DB), postgres/ (the PostgreSQL cluster, when used), store/, logs/ and
run/ (pid files, and which database the server was started on). Ports come from
LORETUNE_PREFECT_PORT, LORETUNE_SAMPLES_PORT and LORETUNE_POSTGRES_PORT (defaults 4200, 8765, 5433).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from loretune import postgres
from loretune.processes import alive

PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFECT_FILE = PROJECT_DIR / "deployments" / "prefect.yaml"
HOST = "127.0.0.1"
DEFAULT_SAMPLES_PORT = 8765
POOL = "loretune-local"
WORKER_NAME = "loretune-local-worker"
DEMO_DEPLOYMENT = "finetune/naruto"
# The tag training tasks carry (tasks/training.GPU_TAG) and how many may hold the GPU at once.
GPU_TAG = "gpu"
GPU_SLOTS = 1
DATABASES = ("sqlite", "postgres")
# The CLI of the Python running this module, so the stack never picks up another install's prefect.
PREFECT = str(Path(sys.executable).with_name("prefect"))

# Loopback only: never send these requests through a proxy from the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StackError(RuntimeError):
    """Something in the stack did not come up; the message says what and where its log is."""


class Stack:
    """Where this stack's state lives and which ports it uses, read from the environment.

    `database` is the Prefect server's: "sqlite" or "postgres"; None means $LORETUNE_DATABASE,
    else the one our running server was started on, else SQLite."""

    def __init__(self, database: str | None = None) -> None:
        home = os.environ.get("LORETUNE_HOME")
        self.home = Path(home).resolve() if home else PROJECT_DIR / ".loretune"
        self.prefect_port = int(os.environ.get("LORETUNE_PREFECT_PORT", "4200"))
        self.samples_port = int(os.environ.get("LORETUNE_SAMPLES_PORT", str(DEFAULT_SAMPLES_PORT)))
        self.ui_url = f"http://{HOST}:{self.prefect_port}"
        self.api_url = f"{self.ui_url}/api"
        self.samples_url = f"http://{HOST}:{self.samples_port}"
        self.logs = self.home / "logs"
        self.run_dir = self.home / "run"
        self.cluster = postgres.Cluster(self.home, self.log("postgres"))
        self.database = database or os.environ.get("LORETUNE_DATABASE") or self.server_database() or "sqlite"
        if self.database not in DATABASES:
            raise StackError(f"unknown database {self.database!r}: choose one of {', '.join(DATABASES)}")

    def env(self) -> dict[str, str]:
        """The environment every process of the stack gets, flow runs included (via the worker)."""
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str(self.home / "prefect"),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            # Absolute, because flow runs start in the worker's own working directory.
            LORETUNE_HOME=str(self.home),
            # deployments/prefect.yaml's pull step sets the flow run's working directory from it.
            LORETUNE_PROJECT_DIR=str(PROJECT_DIR),
            LORETUNE_PREFECT_PORT=str(self.prefect_port),
            LORETUNE_SAMPLES_PORT=str(self.samples_port),
            LORETUNE_POSTGRES_PORT=str(self.cluster.port),
            PYTHONUNBUFFERED="1",  # so logs/*.log are current while a process runs
            # The worker asks the server for scheduled runs every 10 s by default, so a run started
            # by `make demo` or the UI waited 5 s on average before it began; a local server answers
            # a poll every 2 s at no cost worth measuring.
            PREFECT_WORKER_QUERY_SECONDS=os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "2"),
        )
        return env

    # --- processes -------------------------------------------------------------------------

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def running_pid(self, name: str) -> int | None:
        """The pid this stack recorded for `name`, if that process is still alive."""
        try:
            pid = int(self.pid_file(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if _alive(pid):
            return pid
        self.pid_file(name).unlink(missing_ok=True)  # stale: the process is gone
        return None

    def server_env(self) -> dict[str, str]:
        """The Prefect server's environment: the stack's, plus the PostgreSQL URL when it uses
        PostgreSQL. The URL holds the cluster's password, so only the server gets it."""
        env = self.env()
        if self.database == "postgres":
            env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)  # the old name of the same setting
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.cluster.url()
        return env

    def server_database(self) -> str | None:
        """The database our running Prefect server was started on (None when none of ours runs).
        Stacks started before the choice existed ran on SQLite and left no record."""
        if self.running_pid("server") is None:
            return None
        try:
            return self.database_record.read_text().strip() or "sqlite"
        except FileNotFoundError:
            return "sqlite"

    @property
    def database_record(self) -> Path:
        return self.run_dir / "server.database"

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> int:
        """Start `cmd` detached: its own session (so Ctrl-C in the terminal and the end of
        `make demo` leave it running, and `down` can kill its whole process group), output to
        logs/<name>.log, pid to run/<name>.pid."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log(name), "ab") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=PROJECT_DIR,
                env=env or self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file(name).write_text(f"{proc.pid}\n")
        return proc.pid

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def wait_until(self, name: str, label: str, ready, timeout: float) -> float:
        """Poll `ready()` until it is true; fail early, with the log's tail, if the process dies."""
        start = time.monotonic()
        while not ready():
            if self.running_pid(name) is None:
                raise StackError(f"{label} exited.\n{self.log_tail(name)}")
            if time.monotonic() - start > timeout:
                raise StackError(f"{label} not ready after {timeout:.0f}s.\n{self.log_tail(name)}")
            time.sleep(0.5)
        return time.monotonic() - start

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = self.log(name).read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"(no log at {self.log(name)})"
        return f"--- last lines of {self.log(name)} ---\n" + "\n".join(text)

    # --- health ----------------------------------------------------------------------------

    def prefect_healthy(self) -> bool:
        return _get(f"{self.api_url}/health") is not None

    def samples_up(self) -> bool:
        # Any HTTP answer will do: the server only has to be listening, not to like the request.
        return _get(f"{self.samples_url}/fandom/api.php", any_status=True) is not None

    def worker_online(self) -> bool:
        workers = _post(f"{self.api_url}/work_pools/{POOL}/workers/filter", {}) or []
        return any(w["name"] == WORKER_NAME and w.get("status") == "ONLINE" for w in workers)

    # --- the steps of `up` -----------------------------------------------------------------

    def prefect_problem(self) -> str | None:
        """Why the Prefect server answering /api/health on our port must not be reused, or None.

        /api/health alone says too little: a server left running by a deleted clone of the project
        answered it, yet gave HTTP 500 on everything else, so the worker died and the demo's run
        stayed Late. So: a real request must work, and the server must be this stack's (its
        PREFECT_HOME is our state folder's), whoever started it."""
        status, _ = _request(f"{self.api_url}/flow_runs/filter", {"limit": 1})
        if status != 200:
            return (f"the Prefect server at {self.ui_url} answers /api/health but fails a real request "
                    f"(POST /api/flow_runs/filter: {f'HTTP {status}' if status else 'no answer'})")
        ours = self.home / "prefect"
        status, settings = _request(f"{self.api_url}/admin/settings")
        home = settings.get("home") if status == 200 and isinstance(settings, dict) else None
        if not home or Path(home).resolve() != ours.resolve():
            return (f"the Prefect server at {self.ui_url} is not this stack's: its PREFECT_HOME is "
                    f"{home or 'unknown'}, this stack's is {ours}")
        return None

    def start_server(self, name: str, label: str, cmd: list[str], healthy, timeout: float,
                     env: dict[str, str] | None = None, vet=None) -> None:
        """Reuse a healthy server on the port (or ours, still starting), else start one. `vet`
        says why a healthy one must not be reused (None: it may), and then `up` stops there."""
        if healthy():
            pid = self.running_pid(name)
            problem = vet() if vet else None
            if problem:
                port = self.ui_url.rsplit(":", 1)[1]
                fix = (f"stop it (`python -m loretune.stack down` stops ours, pid {pid}) and run `up` again"
                       if pid else f"stop whatever listens on port {port} (a stack of another clone: "
                       f"`make stop` there), or give this stack a free port: LORETUNE_PREFECT_PORT=<port>")
                raise StackError(f"{label}: not reusing it: {problem}.\n  {fix}")
            owner = "ours" if pid else "not started by loretune; `down` leaves it"
            print(f"{label}: reusing the one already up ({owner})")
            return
        pid = self.running_pid(name) or self.spawn(name, cmd, env)
        took = self.wait_until(name, label, healthy, timeout)
        print(f"{label}: started (pid {pid}), healthy after {took:.1f}s; log {self.log(name)}")

    def ensure_pool(self) -> None:
        if _get(f"{self.api_url}/work_pools/{POOL}") is not None:
            print(f"work pool {POOL}: exists")
            return
        self.prefect("work-pool", "create", POOL, "--type", "process")
        print(f"work pool {POOL}: created")

    def ensure_gpu_limit(self) -> None:
        """One training task at a time on the GPU: flow runs whose train tasks carry the `gpu` tag
        (tasks/training.py) queue for its single slot instead of sharing the card's memory."""
        existing = _get(f"{self.api_url}/concurrency_limits/tag/{GPU_TAG}")
        if isinstance(existing, dict) and existing.get("concurrency_limit") == GPU_SLOTS:
            print(f"concurrency limit {GPU_TAG!r}: exists ({GPU_SLOTS})")
            return
        self.prefect("concurrency-limit", "create", GPU_TAG, str(GPU_SLOTS))
        print(f"concurrency limit {GPU_TAG!r}: {GPU_SLOTS} slot")

    def deploy(self, prefect_file: Path) -> None:
        start = time.monotonic()
        self.prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(self.deployment_file(prefect_file)))
        print(f"deployments: registered from {prefect_file} in {time.monotonic() - start:.1f}s")

    def deployment_file(self, prefect_file: Path) -> Path:
        """The prefect.yaml to deploy. `prefect deploy --all` takes no parameter overrides, so
        on a non-default samples port a copy in run/ carries the matching `sample_sources`, and
        scheduled runs use the right server too."""
        if self.samples_port == DEFAULT_SAMPLES_PORT:
            return prefect_file
        spec = yaml.safe_load(prefect_file.read_text())
        for deployment in spec.get("deployments") or []:
            parameters = deployment.get("parameters") or {}
            if "sample_sources" in parameters:
                parameters["sample_sources"] = self.samples_url
        rendered = self.run_dir / "prefect.yaml"
        rendered.parent.mkdir(parents=True, exist_ok=True)
        rendered.write_text(yaml.safe_dump(spec, sort_keys=False))
        return rendered

    def start_worker(self) -> None:
        """Reuse our worker if its process is alive (a second one would race it for runs)."""
        pid = self.running_pid("worker")
        if pid:
            print(f"worker: reusing pid {pid}")
            return
        pid = self.spawn("worker", [PREFECT, "worker", "start", "--pool", POOL, "--name", WORKER_NAME])
        took = self.wait_until("worker", "worker", self.worker_online, timeout=120)
        print(f"worker: started (pid {pid}), online after {took:.1f}s; log {self.log('worker')}")

    def prefect(self, *args: str) -> None:
        """Run a prefect CLI command in this stack's environment; its output goes to the terminal."""
        print("$ prefect " + " ".join(args), flush=True)
        subprocess.run([PREFECT, *args], cwd=PROJECT_DIR, env=self.env(), check=True)

    # --- subcommands -----------------------------------------------------------------------

    def start_postgres(self) -> None:
        start = time.monotonic()
        try:
            did = self.cluster.ensure()
        except postgres.PostgresError as exc:
            raise StackError(str(exc)) from None
        took = f", ready after {time.monotonic() - start:.1f}s" if "started" in did else ""
        print(f"PostgreSQL {self.cluster.address}: {did}{took}; log {self.cluster.log}")

    def up(self, prefect_file: Path = PREFECT_FILE) -> None:
        running_on = self.server_database()
        if running_on and running_on != self.database:
            raise StackError(
                f"our Prefect server at {self.ui_url} runs on {running_on}, not {self.database}: "
                f"stop the stack first (`make stop`), or ask for {running_on} (make demo DB={running_on})"
            )
        if self.database == "postgres":
            self.start_postgres()
        if self.running_pid("server") is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.database_record.write_text(self.database + "\n")
        self.start_server(
            "server",
            f"Prefect server {self.ui_url}",
            [PREFECT, "server", "start", "--host", HOST, "--port", str(self.prefect_port)],
            self.prefect_healthy,
            timeout=180,  # the first start migrates a new database; slow on a small machine
            env=self.server_env(),
            vet=self.prefect_problem,
        )
        self.start_server(
            "samples",
            f"sample sources {self.samples_url}",
            [sys.executable, "-m", "loretune.samples.server", "--host", HOST, "--port", str(self.samples_port)],
            self.samples_up,
            timeout=60,
        )
        self.ensure_pool()
        self.ensure_gpu_limit()
        self.deploy(prefect_file)
        self.start_worker()

    def status(self) -> bool:
        """Print what is up; True when all of it is (PostgreSQL too, when the server uses it)."""
        worker = self.running_pid("worker")
        rows = [
            ("Prefect server", self.ui_url, self.prefect_healthy(), self.running_pid("server")),
            ("sample sources", self.samples_url, self.samples_up(), self.running_pid("samples")),
            ("worker", f"pool {POOL}", worker is not None, worker),
        ]
        database = self.server_database()
        cluster_up = self.cluster.running()
        if database == "postgres" or cluster_up:
            rows.insert(1, ("PostgreSQL", self.cluster.address, cluster_up, self.cluster.pid() if cluster_up else None))
        for label, where, up, pid in rows:
            state = "up" if up else "down"
            owner = f"pid {pid}" if pid else ("not started by loretune" if up else "")
            print(f"{label:15} {state:5} {where:28} {owner}")
        if database:  # what our server was started on
            where = f"{self.cluster.address}/{postgres.DATABASE}" if database == "postgres" else self.home / "prefect"
            print(f"database        {database:5} {where}")
        print(f"state folder    {self.home}")
        return all(up for _, _, up, _ in rows)

    def down(self) -> None:
        """Stop what `up` started, newest first; leave alone anything it found already running."""
        for name, label in (("worker", "worker"), ("samples", "sample sources"), ("server", "Prefect server")):
            pid = self.running_pid(name)
            if pid is None:
                print(f"{label}: not running (nothing of ours to stop)")
                continue
            _kill_group(pid)
            self.pid_file(name).unlink(missing_ok=True)
            print(f"{label}: stopped (process group {pid})")
        self.database_record.unlink(missing_ok=True)
        # Whatever database the server had: a running cluster under this state folder is ours.
        try:
            stopped = self.cluster.stop()
        except postgres.PostgresError as exc:
            raise StackError(str(exc)) from None
        if stopped:
            print(f"PostgreSQL {self.cluster.address}: stopped ({self.cluster.data})")

    def demo(self, run_args: list[str], prefect_file: Path = PREFECT_FILE) -> int:
        """`up`, run the demo deployment and watch it, then say where to look. 0 if it completed."""
        self.up(prefect_file)
        cmd = ["deployment", "run", DEMO_DEPLOYMENT, "--watch", *run_args]
        # --watch shows state changes only; the run's own log lines go to the UI and the worker log.
        print(f"(the run's log: in the UI, or `tail -f {self.log('worker')}`)")
        print("$ prefect " + " ".join(cmd), flush=True)
        proc = subprocess.Popen(
            [PREFECT, *cmd], cwd=PROJECT_DIR, env=self.env(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        flow_run_id = None
        for line in proc.stdout:  # stream it, and pick the run's id out of it on the way
            sys.stdout.write(line)
            sys.stdout.flush()
            found = re.search(r"UUID: ([0-9a-f-]{36})", line)
            flow_run_id = flow_run_id or (found and found.group(1))
        proc.wait()
        if not flow_run_id:
            print(f"error: no flow run id in the output of `prefect {' '.join(cmd)}`", file=sys.stderr)
            return 1
        state = (_get(f"{self.api_url}/flow_runs/{flow_run_id}") or {}).get("state") or {}
        kind = state.get("type", "UNKNOWN")

        print()
        print(f"Prefect UI:  {self.ui_url}")
        print(f"flow run:    {self.ui_url}/runs/flow-run/{flow_run_id}  ({kind})")
        print(f"artifacts:   {self.home / 'store'}")
        if kind != "COMPLETED":
            print(f"error: flow run {flow_run_id} ended {state.get('name', kind)}: {state.get('message')}\n"
                  f"  its log: {self.log('worker')}", file=sys.stderr)
            return 1
        print("evaluation:", flush=True)
        report = subprocess.run(
            [sys.executable, "-m", "loretune", "report", "--flow-run", flow_run_id],
            cwd=PROJECT_DIR, env=self.env(),
        )
        if report.returncode != 0:  # the run itself did complete: say so, but do not fail the demo
            print(f"(`python -m loretune report --flow-run {flow_run_id}` failed: exit {report.returncode})")
        return 0


def _get(url: str, any_status: bool = False):
    """GET url; the decoded JSON (or True), or None when nothing (good) answers."""
    try:
        with _http.open(url, timeout=3) as response:
            body = response.read()
    except urllib.error.HTTPError:
        return True if any_status else None
    except (OSError, ValueError):  # refused, reset, timed out
        return None
    try:
        return json.loads(body)
    except ValueError:
        return True


def _request(url: str, payload: dict | None = None) -> tuple[int | None, object]:
    """GET (or POST `payload` as JSON) url: the HTTP status (None when nothing answers) and the
    decoded JSON body (None when it is not JSON)."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with _http.open(request, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return None, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def _post(url: str, payload: dict):
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with _http.open(request, timeout=3) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        # Reap it first if it is our own exited child (the slow test starts the stack in one
        # process and stops it in another, but a zombie would otherwise look alive).
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    return alive(pid)


def _kill_group(pgid: int, grace: float = 15.0) -> None:
    """SIGTERM the whole group (the server's uvicorn, the worker's flow runs), SIGKILL stragglers."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _alive(pgid)  # reaps the leader if it is our child
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loretune.stack",
        description=__doc__.split("\n")[0],
        epilog="demo passes any other arguments on to `prefect deployment run`, "
        "e.g. demo -p overrides='{\"training.max_steps\": 30}'",
        allow_abbrev=False,  # so `-p` reaches prefect instead of matching --prefect-file
    )
    parser.add_argument("command", choices=["up", "down", "status", "demo"])
    parser.add_argument(
        "--database", choices=DATABASES, default=None,
        help="the Prefect server's database, for up and demo (default: $LORETUNE_DATABASE, else the "
        "one the running server uses, else sqlite); postgres runs a PostgreSQL cluster in the state folder",
    )
    parser.add_argument(
        "--prefect-file", type=Path, default=PREFECT_FILE,
        help="deployment definitions to register (default: deployments/prefect.yaml)",
    )
    args, run_args = parser.parse_known_args(argv)
    if run_args and args.command != "demo":
        parser.error(f"unrecognized arguments: {' '.join(run_args)}")
    try:
        stack = Stack(args.database)
        if args.command == "up":
            stack.up(args.prefect_file)
        elif args.command == "down":
            stack.down()
        elif args.command == "status":
            return 0 if stack.status() else 3
        else:
            return stack.demo(run_args, args.prefect_file)
    except (StackError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The servers and the worker run in their own sessions, so they (and a flow run) go on.
        print("\ninterrupted; the stack is still running: `make stop` stops it", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
