"""Shared fixtures: a real server (real Monty workers) on a loopback port, in a thread of
its own so blocking clients and asyncio tests can both talk to it."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandbox.app import new_event_loop
from sandbox.config import Settings
from sandbox.core.limits import EffectiveLimits, RequestedLimits
from sandbox.policy.model import DEFAULT_POLICY
from sandbox_client import ExecutionResult, Failure, FailureKind, SandboxClient
from sandbox_client._request import execute_request
from sandbox_client._tool_run import call_tool_sync, invocation, start_message
from sandbox_client.protocol.service import ServiceStub
from sandbox_client.protocol.v1 import sandbox_pb2
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


def drive_run(
    address: str,
    code: str,
    tools: dict[str, Any],
    stop: Callable[[sandbox_pb2.RunResponse], bool],
    **options: Any,
) -> None:
    """A Run stream driven by hand, as a client that can vanish mid-run: it answers each
    tool call with `tools` until `stop` (shown every message first) says to stop, then
    cancels the stream. `options` are execute()'s."""
    outgoing = [start_message(execute_request(code, **options), tools)]
    cond = threading.Condition()
    done = threading.Event()

    def requests() -> Iterator[sandbox_pb2.RunRequest]:
        sent = 0
        while not done.is_set():
            with cond:
                cond.wait_for(lambda n=sent: len(outgoing) > n or done.is_set(), timeout=0.1)
                pending = outgoing[sent:]
            for msg in pending:
                sent += 1
                yield msg

    with grpc.insecure_channel(address) as channel:
        stream = ServiceStub(channel).Run(requests(), timeout=30)
        for msg in stream:
            if stop(msg):
                break
            if msg.HasField("tool_call"):
                with cond:
                    outgoing.append(call_tool_sync(invocation(msg.tool_call, tools)))
                    cond.notify()
        stream.cancel()
        done.set()


def terminate(proc: subprocess.Popen[Any], timeout_s: float = 20) -> None:
    """Stops a `sandbox serve` (or any) child: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def failure_of(result: ExecutionResult, kind: FailureKind) -> Failure:
    """The result's failure, asserted to be of `kind`."""
    failure = result.failure
    assert failure is not None and failure.kind is kind, failure
    return failure


def limits(**asked: int) -> EffectiveLimits:
    """The default policy's limits, lowered where `asked` (as a request would)."""
    return DEFAULT_POLICY.limits(RequestedLimits(**asked))


class CapturedLog:
    """Stands in for a module's structlog logger (monkeypatch it over `module.log`):
    keeps (level, event, fields) of every line."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def emit(event: str, **fields: Any) -> None:
            self.events.append((level, event, fields))

        return emit


def docker_problem(image: str) -> str | None:
    """Why container tests cannot run here (no Docker engine answers, or `image` is not
    built), or None when they can."""
    import docker.errors  # only container tests pay for it

    try:
        engine = docker.from_env(version="auto", timeout=10)
        engine.ping()
    except Exception as exc:
        return f"no Docker engine answers ({type(exc).__name__}: {exc}); see scripts/ci_docker.sh"
    try:
        engine.images.get(image)
    except docker.errors.ImageNotFound:
        return f"the image {image} is missing; build it with `make image`"
    finally:
        engine.close()
    return None


def require(problem: str | None) -> None:
    """Skips the test for `problem`, if there is one; under CI=true, where the engine and
    the images must exist, fails it."""
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"{problem} (container tests must run under CI=true)")
    pytest.skip(problem)


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


@contextmanager
def killing_monty_workers(after_s: float = 0.5, every_s: float = 0.25) -> Iterator[None]:
    """Kills this process's Monty workers after `after_s` and again every `every_s` until
    the block ends: a run started late on a loaded machine (on a worker spawned after the
    first kill) still meets a kill, instead of running into its time limit."""
    done = threading.Event()

    def keep_killing() -> None:
        if done.wait(after_s):
            return
        while True:
            kill_monty_workers()
            if done.wait(every_s):
                return

    killer = threading.Thread(target=keep_killing, daemon=True)
    killer.start()
    try:
        yield
    finally:
        done.set()
        killer.join(timeout=5)


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One real PostgreSQL cluster for the whole run (tests/postgres.py); each test that
    needs isolation takes a fresh database of it (`postgres.database()`)."""
    from tests.postgres import PostgresServer, postgres_problem

    require(postgres_problem())
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()
