"""Crash recovery with real processes: the server SIGKILLed while a tool run is between
its second and third tool call, then restarted on the same port and journal; and the
same with the client process killed and started again. Tools already answered must not
be called again, and the result must equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from sandbox_client import RecoveryPolicy, SandboxClient
from sandbox_client.recovery import Outcome
from tests.conftest import terminate

CODE = """
import time, random, datetime
first = step_one(1)
second = step_two(first, label="b")
r = random.random()
stamp = str(datetime.datetime.now())
print("after two", r)
time.sleep(1.5)
third = step_three([first, second])
{"first": first, "second": second, "third": third, "r": r, "stamp": stamp}
"""
TOOL_PART = ("first", "second", "third")


class Server:
    """`sandbox serve` as a child process, restartable on the same port and state dir; as
    a context manager, started and then stopped. Every process it starts is stopped on
    the way out, one started by a restart in another thread included, and a start waits
    for the server's "serving" line (its readiness), never for a fixed time."""

    READY_TIMEOUT_S = 120.0  # a loaded CI machine starting a container pool

    def __init__(self, tmp: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.config = tmp / "sandbox.toml"
        self.config.write_text(
            f"[server]\nport = {self.port}\n[log]\nformat = 'json'\n"
            f"[monty]\nmin_workers = 1\nwarm_sessions = 0\n"
            f"[journal]\nstate_dir = '{tmp / 'state'}'\n"
        )
        self.proc: subprocess.Popen[str] | None = None
        self.address = f"127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._started: list[subprocess.Popen[str]] = []
        self._restarts: list[threading.Thread] = []

    def start(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "serve", "--config", str(self.config)],
            stderr=subprocess.PIPE,
            text=True,
        )
        with self._lock:
            self._started.append(proc)  # stopped on the way out, ready or not
        ready = threading.Event()

        def read_log() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:  # reaping leftovers may be logged before "serving"
                if line.startswith("{") and json.loads(line).get("event") == "serving":
                    ready.set()

        threading.Thread(target=read_log, daemon=True).start()
        if not ready.wait(self.READY_TIMEOUT_S):
            raise AssertionError(
                f"the server did not say it was serving in {self.READY_TIMEOUT_S} s"
            )
        self.proc = proc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def restart(self) -> None:
        """Kills the server (SIGKILL: nothing is cleaned up) and starts it again."""
        with self._lock:
            self._restarts.append(threading.current_thread())
        self.kill()
        self.start()

    def stop(self) -> None:
        for thread in self._restarts:
            if thread is not threading.current_thread():
                thread.join(timeout=self.READY_TIMEOUT_S)
        for proc in self._started:
            terminate(proc)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(tmp_path) as srv:
        yield srv


def tools(calls: dict[str, int], after_second: Any = None) -> dict[str, Any]:
    def step_one(x: int) -> int:
        calls["step_one"] = calls.get("step_one", 0) + 1
        return x + 10

    def step_two(x: int, label: str = "") -> str:
        calls["step_two"] = calls.get("step_two", 0) + 1
        if after_second is not None:
            # Once the answer is on its way: the server journals it and the code sleeps.
            threading.Timer(0.4, after_second).start()
        return f"{label}{x}"

    def step_three(items: list[Any]) -> int:
        calls["step_three"] = calls.get("step_three", 0) + 1
        return len(items)

    return {"step_one": step_one, "step_two": step_two, "step_three": step_three}


PATIENT = RecoveryPolicy(wait_initial_s=0.2, wait_max_s=1.0, wait_jitter_s=0.1)


def survives_server_kill(server: Server, key: str, **options: Any) -> Outcome:
    """Runs CODE under `key` with the server killed and restarted after the second tool
    answer, and checks what the module docstring promises; `options` are run()'s, for
    the interrupted run and the uninterrupted one it is compared with."""
    calls: dict[str, int] = {}
    # Its retries wait for the restarted server to listen (gRPC wait-for-ready), however
    # long a loaded machine takes to start it, rather than spending their budget on it.
    with SandboxClient(server.address, timeout_s=120, wait_for_ready=True) as client:
        outcome = client.run(
            CODE,
            tools=tools(calls, after_second=server.restart),
            idempotency_key=key,
            recovery=PATIENT,
            **options,
        )
        assert outcome.ok, outcome.failure
        assert calls == {"step_one": 1, "step_two": 1, "step_three": 1}
        assert len(outcome.attempts) >= 2  # the first attempt died with the server
        assert outcome.attempts[0].idempotency_key == outcome.attempts[-1].idempotency_key

        plain: dict[str, int] = {}
        uninterrupted = client.run(CODE, tools=tools(plain), **options)
    assert uninterrupted.ok and plain == {"step_one": 1, "step_two": 1, "step_three": 1}
    result, expected = outcome.result.result, uninterrupted.result.result
    assert {k: result[k] for k in TOOL_PART} == {k: expected[k] for k in TOOL_PART}
    # Printed once, with the value the result carries: by the leg that finished (Monty),
    # or again by the replay (a container), which the result holds once.
    assert outcome.result.stdout == f"after two {result['r']}\n"
    return outcome


def test_a_run_survives_the_server_being_killed_after_the_second_answer(
    server: Server,
) -> None:
    survives_server_kill(server, "run-server-killed")


CLIENT = textwrap.dedent(
    """
    import json, os, signal, sys, threading
    from sandbox_client import SandboxClient, RecoveryPolicy

    address, key, log, die = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "die"
    code = sys.stdin.read()

    def record(name):
        with open(log, "a") as out:
            out.write(name + "\\n")

    def step_one(x):
        record("step_one")
        return x + 10

    def step_two(x, label=""):
        record("step_two")
        if die:
            threading.Timer(0.4, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
        return f"{label}{x}"

    def step_three(items):
        record("step_three")
        return len(items)

    with SandboxClient(address, timeout_s=60) as client:
        outcome = client.run(
            code,
            tools={"step_one": step_one, "step_two": step_two, "step_three": step_three},
            idempotency_key=key,
        )
    print(json.dumps({"ok": outcome.ok, "result": outcome.result.result,
                      "stdout": outcome.result.stdout}))
    """
)


def test_a_run_survives_the_client_being_killed_and_restarted(
    server: Server, tmp_path: Path
) -> None:
    log = tmp_path / "calls.log"
    script = tmp_path / "client.py"
    script.write_text(CLIENT)

    def client(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), server.address, "run-client-killed", str(log), mode],
            input=CODE,
            capture_output=True,
            text=True,
            timeout=60,
        )

    killed = client("die")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert log.read_text().split() == ["step_one", "step_two"]

    finished = client("live")
    assert finished.returncode == 0, finished.stderr
    answer = json.loads(finished.stdout)
    assert answer["ok"]
    assert log.read_text().split() == ["step_one", "step_two", "step_three"]
    assert {k: answer["result"][k] for k in TOOL_PART} == {
        "first": 11,
        "second": "b11",
        "third": 2,
    }
    assert answer["stdout"] == f"after two {answer['result']['r']}\n"
    assert os.path.exists(server.config.parent / "state" / "journal.sqlite3")
