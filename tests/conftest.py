"""Shared fixtures: a real server (real Monty workers) on a loopback port, in a thread of
its own so blocking clients and asyncio tests can both talk to it."""

from __future__ import annotations

import gc
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sandbox.app import new_event_loop
from sandbox.config import Settings
from sandbox_client import SandboxClient
from sandbox_client.testing import InProcessServer

REPO = Path(__file__).resolve().parent.parent
# ../shared/corpora beside the repository, or wherever SANDBOX_CORPORA points (a clone
# made elsewhere).
CORPORA = Path(os.environ.get("SANDBOX_CORPORA") or REPO.parent / "shared" / "corpora")
IN_CI = os.environ.get("CI", "").lower() == "true"


class ServerThread(InProcessServer):
    """The SDK's in-process test server, on the loop `sandbox serve` uses."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, loop_factory=lambda: new_event_loop(settings.server.event_loop))


def test_settings(**sections: dict[str, Any]) -> Settings:
    """Settings for a test server; `sections` add to or replace single fields of these
    defaults, section by section: `test_settings(monty={"max_workers": 1})`."""
    values: dict[str, dict[str, Any]] = {
        "server": {"port": 0},
        "monty": {"min_workers": 2, "max_workers": 4},
        # Each server its own journal and checkpoint key, never the user's state directory.
        "journal": {"state_dir": tempfile.mkdtemp(prefix="sandbox-state-")},
    }
    for name, fields in sections.items():
        values[name] = {**values.get(name, {}), **fields}
    return Settings(**values)


@contextmanager
def running_server(**sections: dict[str, Any]) -> Iterator[ServerThread]:
    with ServerThread(test_settings(**sections)) as server:
        yield server


@pytest.fixture(scope="session")
def server() -> Iterator[ServerThread]:
    with running_server() as srv:
        yield srv


@pytest.fixture
def client(server: ServerThread) -> Iterator[SandboxClient]:
    with SandboxClient(server.address, timeout_s=60) as c:
        yield c


def monty_worker_pids() -> list[int]:
    """Monty worker processes that are children of this test process."""
    me = str(os.getpid())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = stat.rsplit(")", 1)[1].split()[1]
        if ppid == me and b"monty" in cmdline:
            pids.append(int(entry.name))
    return pids


def kill_monty_workers() -> int:
    killed = 0
    for pid in monty_worker_pids():
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Finalizing Monty pools during interpreter shutdown can abort the process (and turn
    # a green run into exit status 134); collect them while the runtime is whole.
    gc.collect()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from .corpus import REPORTS

    if REPORTS:
        terminalreporter.section("corpus results")
        for line in REPORTS:
            terminalreporter.write_line(line)
