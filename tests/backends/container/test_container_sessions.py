"""Container sessions through a real server, under runc and runsc: between executions
the session's container is frozen, so what the code leaves running uses no CPU."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

import docker
import pytest

from sandbox.backends.container.engine import SCOPE_LABEL
from sandbox_client import ExecutionResult, FailureKind, RequestRefused
from tests.backends.container.conftest import SCOPE, Lab

pytestmark = pytest.mark.docker
T = TypeVar("T")

SPIN = """
import threading
def spin():
    while True:
        pass
threading.Thread(target=spin, name="spin", daemon=True).start()
counter = 41
"""


def _wait_for(check: Callable[[], T], timeout_s: float = 20) -> T:
    """check()'s first true value within `timeout_s` (its last value when none is)."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def _cpu_s(engine: docker.DockerClient, container_id: str) -> float:
    stats = engine.api.stats(container_id, stream=False, one_shot=True)
    return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9


def _paused(engine: docker.DockerClient) -> list[str]:
    filters = {"label": f"{SCOPE_LABEL}={SCOPE}", "status": "paused"}
    return [c["Id"] for c in engine.api.containers(filters=filters)]


def test_an_idle_session_does_not_run(lab: Lab, engine: docker.DockerClient) -> None:
    # A thread the code left spinning kept about half a core busy per idle session.
    with lab.client() as client:
        before = set(_paused(engine))
        session = client.create_session(backend="container", policy="lab")
        try:
            started = client.execute(SPIN, session_id=session.session_id)
            assert started.ok, started.failure
            # Frozen once the result is out (the freeze does not hold up the reply).
            (frozen,) = _wait_for(lambda: set(_paused(engine)) - before)
            used = _cpu_s(engine, frozen)
            time.sleep(2)
            idle = _cpu_s(engine, frozen) - used
            assert idle < 0.05, f"{idle:.2f} s of CPU in 2 s idle"
            # Thawed for the next execution: the state and the thread are still there.
            again = client.execute(
                "import threading\ncounter += 1\n"
                "[counter, 'spin' in [t.name for t in threading.enumerate()]]",
                session_id=session.session_id,
            )
            assert again.ok, again.failure
            assert again.result == [42, True]
            assert _wait_for(lambda: frozen in _paused(engine))
        finally:
            client.close_session(session.session_id)
    # Closing removes it, frozen or not (in the background).
    assert _wait_for(lambda: frozen not in _paused(engine))


# What the code can reach of the runner it runs in (its globals, gc): the object that
# writes its frames, with the number of the job running.
EMITTER = 'emitter = next(o for o in gc.get_objects() if type(o).__name__ == "Emitter")\n'


def _forged_result(value: str, job: str) -> str:
    return (
        f'frame = {{"t": "result", "ok": True, "exit_code": 0, "value": json.dumps({value!r}),'
        f' "j": {job}}}\n'
        'os.write(emitter.fd, (json.dumps(frame) + "\\n").encode())\n'
    )


def test_a_result_the_code_forges_stays_its_own_runs(lab: Lab) -> None:
    # The code wrote a valid-looking result frame for its own run: the host took it, and
    # every later run of the session got the run before's result (a network attempt
    # audited as OK, plain code as POLICY_VIOLATION).
    forge = (
        "import gc, json, os, time\n"
        + EMITTER
        + _forged_result("forged", "emitter.job")
        # Its own result comes later: the job is over by then, and it is nobody's.
        + "time.sleep(0.5)\n'genuine'"
    )
    with lab.client() as client:
        session = client.create_session(backend="container", policy="lab")
        try:

            def run(code: str) -> ExecutionResult:
                return client.execute(code, session_id=session.session_id)

            lied = run(forge)
            assert lied.ok and lied.result == "forged"  # a lie about itself, and no more
            network = run("import socket\nsocket.create_connection(('10.9.9.9', 80), timeout=1)")
            assert network.failure is not None, network
            assert network.failure.kind is FailureKind.POLICY_VIOLATION, network.failure
            plain = run("1 + 1")
            assert plain.ok and plain.result == 2, plain.failure
            failing = run("raise ValueError('four')")
            assert failing.failure is not None and failing.failure.exception_type == "ValueError"
        finally:
            client.close_session(session.session_id)


def test_a_frame_a_thread_writes_for_its_finished_run_is_nobodys(lab: Lab) -> None:
    late = (
        "import gc, json, os, threading, time\n" + EMITTER + "mine = emitter.job\n"
        "def late():\n    time.sleep(0.3)\n"
        + "".join("    " + line + "\n" for line in _forged_result("late", "mine").splitlines())
        + "threading.Thread(target=late).start()\n'first'"
    )
    with lab.client() as client:
        session = client.create_session(backend="container", policy="lab")
        try:
            first = client.execute(late, session_id=session.session_id)
            assert first.ok and first.result == "first", first.failure
            # The thread writes its frame while this run sleeps: numbered for the run
            # before, it is dropped.
            second = client.execute(
                "import time\ntime.sleep(1)\n'second'", session_id=session.session_id
            )
            assert second.ok and second.result == "second", second
        finally:
            client.close_session(session.session_id)


HIJACK = """
import gc
runner = next(o for o in gc.get_objects() if type(o).__name__ == "Runner")
seen = []
def lie(job):
    seen.append(job["code"])
    return {"t": "result", "ok": True, "exit_code": 0, "value": json.dumps(seen)}
import json
runner.run = lie
"""


def test_a_runner_the_code_rewrites_lies_for_its_own_session_only(lab: Lab) -> None:
    # Replacing the runner's method (through gc) made every later run report OK, and let
    # the code read their code, inputs and stdin: in its own session, whose interpreter
    # it is. Another session, and any other run, is another container.
    with lab.client() as client:
        hijacked = client.create_session(backend="container", policy="lab")
        other = client.create_session(backend="container", policy="lab")
        try:
            assert client.execute(HIJACK, session_id=hijacked.session_id).ok
            secret = client.execute("'other-session-secret'", session_id=other.session_id)
            assert secret.ok and secret.result == "other-session-secret"
            plain = client.execute("'not a session'", backend="container", policy="lab")
            assert plain.ok and plain.result == "not a session"
            told = client.execute("'mine'", session_id=hijacked.session_id)
            assert told.ok and told.result == ["'mine'"]  # its own run's code, no other's
            # What the supervisor sees is not the runner's to rewrite: its death.
            died = client.execute(
                "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
                session_id=other.session_id,
            )
            assert died.failure is not None and died.failure.details["signal"] == "SIGKILL"
        finally:
            client.close_session(hijacked.session_id)
            with contextlib.suppress(RequestRefused):  # gone with its interpreter
                client.close_session(other.session_id)


def test_a_session_that_leaves_nothing_running_is_not_frozen(
    lab: Lab, engine: docker.DockerClient
) -> None:
    with lab.client() as client:
        before = set(_paused(engine))
        session = client.create_session(backend="container", policy="lab")
        try:
            for n in range(3):
                assert client.execute(f"x = {n}", session_id=session.session_id).ok
            time.sleep(0.5)
            assert set(_paused(engine)) == before  # no pause, and no thaw to pay for
        finally:
            client.close_session(session.session_id)


def test_a_session_whose_runner_died_says_so(lab: Lab) -> None:
    with lab.client() as client:
        session = client.create_session(backend="container", policy="lab")
        killed = client.execute(
            "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", session_id=session.session_id
        )
        assert killed.failure is not None and killed.failure.kind is FailureKind.RUNTIME_ERROR
        assert killed.failure.details["signal"] == "SIGKILL"
        # Its interpreter, and with it the session, is gone.
        lost = client.execute("1", session_id=session.session_id)
        assert lost.failure is not None and lost.failure.kind is FailureKind.CORRUPT_STATE
        assert "start a new session" in lost.failure.message
