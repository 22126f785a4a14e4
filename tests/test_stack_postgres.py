"""The local stack's database choice, and its PostgreSQL cluster (loretune/postgres.py).

The fast tests here read arguments and environment, or run the cluster on its own (initdb, start,
stop: a couple of seconds, no Prefect). The whole stack on PostgreSQL is the slow deployment test's
`postgres` case (tests/test_deployment.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from loretune import postgres, stack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def home(monkeypatch, tmp_path):
    monkeypatch.setenv("LORETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LORETUNE_DATABASE", raising=False)
    return tmp_path / "home"


def test_sqlite_stays_the_default(home):
    assert stack.Stack().database == "sqlite"


def test_the_database_comes_from_the_argument_else_the_environment(home, monkeypatch):
    assert stack.Stack("postgres").database == "postgres"
    monkeypatch.setenv("LORETUNE_DATABASE", "postgres")
    assert stack.Stack().database == "postgres"
    assert stack.Stack("sqlite").database == "sqlite"
    monkeypatch.setenv("LORETUNE_DATABASE", "mysql")
    with pytest.raises(stack.StackError, match="unknown database 'mysql'"):
        stack.Stack()


def test_the_command_line_takes_only_the_two_databases(home, capsys):
    with pytest.raises(SystemExit) as exit:
        stack.main(["up", "--database", "mysql"])
    assert exit.value.code == 2
    assert "invalid choice: 'mysql'" in capsys.readouterr().err


def test_the_server_alone_gets_the_connection_url(home, monkeypatch):
    """The URL holds the cluster's password: the Prefect server needs it, flow runs do not."""
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "sqlite+aiosqlite:///elsewhere.db")
    pg = stack.Stack("postgres")
    pg.cluster.dir.mkdir(parents=True)
    pg.cluster.password_file.write_text("s3cret/+\n")
    env = pg.server_env()
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == (
        f"postgresql+asyncpg://loretune:s3cret%2F%2B@127.0.0.1:{pg.cluster.port}/prefect"
    )
    assert "PREFECT_API_DATABASE_CONNECTION_URL" not in env  # the old name would compete with it
    assert not any("s3cret" in value for value in pg.env().values())
    assert "s3cret" not in repr(pg.cluster)
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in stack.Stack("sqlite").server_env()


def test_the_postgres_port_comes_from_the_environment(home, monkeypatch):
    assert stack.Stack().cluster.port == postgres.DEFAULT_PORT == 5433
    monkeypatch.setenv("LORETUNE_POSTGRES_PORT", "15999")
    assert stack.Stack().cluster.address == "127.0.0.1:15999"


def test_missing_programs_say_what_to_install(home, monkeypatch, tmp_path):
    monkeypatch.setenv("LORETUNE_POSTGRES_BIN", str(tmp_path / "nowhere"))
    with pytest.raises(postgres.PostgresError, match=r"apt-get install postgresql"):
        postgres.find_bin_dir()
    cluster = postgres.Cluster(home, home / "logs" / "postgres.log", port=free_port())
    with pytest.raises(postgres.PostgresError, match=r"apt-get install postgresql"):
        cluster.ensure()
    assert not cluster.running() and not cluster.stop()  # `down` with no cluster needs no programs


def test_up_refuses_another_database_than_the_running_servers(home, monkeypatch):
    """A server of ours runs on PostgreSQL: `up --database sqlite` says so instead of reusing it."""
    s = stack.Stack("sqlite")
    s.run_dir.mkdir(parents=True)
    s.pid_file("server").write_text(f"{os.getpid()}\n")  # a live pid stands in for the server
    s.database_record.write_text("postgres\n")
    assert stack.Stack().database == "postgres"  # nothing asked for: the running server's
    with pytest.raises(stack.StackError, match="runs on postgres, not sqlite.*make stop"):
        stack.Stack("sqlite").up()


def installed() -> bool:
    try:
        postgres.find_bin_dir()
    except postgres.PostgresError:
        return False
    return True


@pytest.mark.skipif(not installed(), reason="needs Debian's postgresql (make test installs it)")
def test_the_cluster_is_made_once_listens_on_loopback_only_and_stops():
    # Not tmp_path: the cluster's user (postgres, when root runs this) cannot enter pytest's 0700 folders.
    home = Path(tempfile.mkdtemp(prefix="loretune-pg-test-"))
    home.chmod(0o711)
    cluster = postgres.Cluster(home, home / "logs" / "postgres.log", port=free_port())
    try:
        assert cluster.ensure().startswith("initialised and started")
        assert cluster.running() and cluster.running_port() == cluster.port
        assert cluster.ensure() == "reusing the one already up (ours)"
        assert cluster.psql("SHOW listen_addresses") == "127.0.0.1"
        assert cluster.psql("SHOW unix_socket_directories") == ""
        assert cluster.psql("SELECT datname FROM pg_database WHERE datname = 'prefect'") == "prefect"
        assert (cluster.password_file.stat().st_mode & 0o777) == 0o600
        assert cluster.password_file.read_text().strip() not in cluster.log.read_text()
        assert cluster.stop() and not cluster.running()
        assert cluster.ensure().startswith("started")  # the same cluster again, not a new one
    finally:
        cluster.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the reachability check is for root handing the cluster to a user")
def test_a_state_folder_the_cluster_user_cannot_enter_is_named(tmp_path):
    if not installed():
        pytest.skip("needs Debian's postgresql")
    # tmp_path is under pytest's 0700 root folder: the `postgres` user cannot get to it.
    cluster = postgres.Cluster(tmp_path / "home", tmp_path / "home" / "logs" / "postgres.log", port=free_port())
    with pytest.raises(postgres.PostgresError, match=r"cannot enter /.*LORETUNE_HOME"):
        cluster.ensure()
