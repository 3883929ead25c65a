"""Container sessions through a real server, under runc and runsc: between executions
the session's container is frozen, so what the code leaves running uses no CPU."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import docker
import pytest

from sandbox.backends.container.engine import SCOPE_LABEL
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
