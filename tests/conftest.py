"""Shared fixtures: the sample sources server and Prefect's test harness, once per session."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

# Before anything imports Prefect: its state goes to a throwaway folder, never ~/.prefect.
os.environ.setdefault("LORETUNE_HOME", tempfile.mkdtemp(prefix="loretune-test-home-"))
os.environ.setdefault("PREFECT_HOME", os.path.join(os.environ["LORETUNE_HOME"], "prefect"))
os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)
# One dequantised SmolLM2 for the session, shared by tests whose runs have a LORETUNE_HOME of their own.
os.environ.setdefault("LORETUNE_MODEL_CACHE", os.path.join(os.environ["LORETUNE_HOME"], "model-cache"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def samples():
    """One sample server for the whole session, on one port: document URLs contain it."""
    from loretune.samples.server import SampleSourcesServer

    with SampleSourcesServer(port=free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
