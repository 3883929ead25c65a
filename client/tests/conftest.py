"""Fixtures for the client's tests: the same real server (real Monty workers, loopback,
port 0) the server's tests use, borrowed from tests/conftest.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sandbox.policy.model import MiB, Policy, PolicyRegistry  # noqa: E402
from sandbox_client import Backend, RecoveryPolicy, SandboxClient  # noqa: E402
from sandbox_client.testing import sandbox_server  # noqa: E402
from tests.conftest import (  # noqa: E402
    ServerThread,
    docker_problem,
    kill_monty_workers,
    require,
    running_server,
)

__all__ = ["MiB", "ServerThread", "kill_monty_workers", "running_server", "sandbox_server"]

# Real waits, but short ones, so the suite stays fast.
FAST = RecoveryPolicy(wait_initial_s=0.05, wait_max_s=0.5, wait_jitter_s=0.05, max_total_s=60)


def with_policies(srv: ServerThread, *extra: Policy) -> None:
    """Gives a running test server more policies beside `default`. The executor reads
    its registry on every request, so this is the real policy path, not a stub."""
    policies = {"default": Policy(name="default"), **{p.name: p for p in extra}}
    srv.server.executor.policies = PolicyRegistry(policies, "default")


def container_enabled(srv: ServerThread) -> bool:
    return Backend.CONTAINER in srv.server.executor.backends


@pytest.fixture(scope="session")
def server() -> Iterator[ServerThread]:
    with running_server() as srv:
        with_policies(srv, Policy(name="roomy", memory_bytes=512 * MiB))
        yield srv


@pytest.fixture(scope="session")
def container_server() -> Iterator[ServerThread]:
    """A real server with the container backend on. Skips locally without an engine or
    the runner image; fails under CI=true, where both must exist."""
    require(docker_problem("sandbox-runner:latest"))
    with running_server(container={"enabled": True, "pool_size": 1, "scope": "test-client"}) as srv:
        yield srv


@pytest.fixture
def client(server: ServerThread) -> Iterator[SandboxClient]:
    with SandboxClient(server.address, timeout_s=60) as c:
        yield c
