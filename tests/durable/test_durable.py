"""Durable executions: exactly-once replies from the journal, tool runs with checkpoints,
tampered checkpoints, retention. (Crash recovery with real processes: test_recovery_kill.)"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandbox.durable.checkpoints import load_checkpoint_key
from sandbox.durable.durability import Durability
from sandbox.durable.journal import Entry, Pinned, SqliteJournal
from sandbox_client import (
    AsyncSandboxClient,
    Backend,
    ExecutionResult,
    FailureKind,
    RecoveryPolicy,
    SandboxClient,
)
from sandbox_client.protocol.service import ServiceStub
from sandbox_client.protocol.v1 import sandbox_pb2
from tests.conftest import ServerThread, drive_run, running_server

THREE_TOOLS = """
first = step_one(1)
second = step_two(first, label="b")
third = step_three([first, second])
print("done", third)
{"first": first, "second": second, "third": third}
"""

# Three calls of an async tool, gathered.
GATHERED = (
    "import asyncio\n"
    "async def main():\n"
    "    return await asyncio.gather(fetch('a'), fetch('b'), fetch('c'))\n"
    "await main()\n"
)


@pytest.fixture(scope="module")
def durable_server() -> Iterator[ServerThread]:
    with running_server() as srv:
        yield srv


def count_runs(srv: ServerThread) -> list[int]:
    """Counts the Monty backend's runs in this server (the side effect the journal saves)."""
    backend: Any = srv.server.executor.backends[Backend.MONTY]
    runs = [0]
    original = backend.run

    async def counted(*args: Any, **kwargs: Any) -> ExecutionResult:
        runs[0] += 1
        return await original(*args, **kwargs)

    backend.run = counted
    return runs


class Counter:
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def tools(self) -> dict[str, Any]:
        def step_one(x: int) -> int:
            self.bump("step_one")
            return x + 10

        def step_two(x: int, label: str = "") -> str:
            self.bump("step_two")
            return f"{label}{x}"

        def step_three(items: list[Any]) -> int:
            self.bump("step_three")
            return len(items)

        return {"step_one": step_one, "step_two": step_two, "step_three": step_three}

    def bump(self, name: str) -> None:
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1


# -- exactly-once Execute ----------------------------------------------------------------


def test_a_retried_request_is_answered_from_the_journal(durable_server: ServerThread) -> None:
    runs = count_runs(durable_server)
    with SandboxClient(durable_server.address) as client:
        first = client.execute("print('side effect')\n6 * 7", idempotency_key="k-retry")
        again = client.execute("print('side effect')\n6 * 7", idempotency_key="k-retry")
    assert first.ok and not first.replayed
    assert again.replayed and again.ok
    assert (again.execution_id, again.stdout, again.result) == (
        first.execution_id,
        "side effect\n",
        42,
    )
    assert runs[0] == 1


def test_a_keyed_execution_costs_one_journal_write(durable_server: ServerThread) -> None:
    journal = durable_server.server.executor.journal
    assert journal is not None
    db: Any = journal.store._db  # type: ignore[attr-defined]
    with SandboxClient(durable_server.address) as client:
        before = db.total_changes
        assert client.execute("7 * 6", idempotency_key="k-one-write").ok
        assert db.total_changes - before == 1  # the result, not a claim and then the result
        assert client.execute("7 * 6", idempotency_key="k-one-write").replayed
        assert db.total_changes - before == 1  # a replay writes nothing
        failed = client.execute("1 / 0", idempotency_key="k-one-write-failed")
    assert failed.failure is not None and failed.failure.kind is FailureKind.RUNTIME_ERROR
    entry = journal.store.get("local", "k-one-write-failed") or journal.store.get(
        "", "k-one-write-failed"
    )
    assert entry is not None and entry.state == "done"  # a final failure is replayed too


def test_the_same_key_with_different_code_is_invalid(durable_server: ServerThread) -> None:
    with SandboxClient(durable_server.address) as client:
        assert client.execute("1", idempotency_key="k-diff").ok
        other = client.execute("2", idempotency_key="k-diff")
    assert other.failure is not None
    assert other.failure.kind is FailureKind.INVALID_REQUEST
    assert other.failure.details.get("field") == "idempotency_key"


async def test_concurrent_duplicates_run_once(durable_server: ServerThread) -> None:
    runs = count_runs(durable_server)
    code = "import time\ntime.sleep(0.4)\n'slow'"
    async with AsyncSandboxClient(durable_server.address) as client:
        results = await asyncio.gather(
            *(client.execute(code, idempotency_key="k-concurrent") for _ in range(5))
        )
    assert runs[0] == 1
    assert {r.execution_id for r in results} == {results[0].execution_id}
    assert sorted(r.replayed for r in results) == [False, True, True, True, True]


def test_retryable_failures_are_not_recorded(durable_server: ServerThread) -> None:
    """A retry after SANDBOX_CRASH or INFRA_UNAVAILABLE must really run again."""
    backend: Any = durable_server.server.executor.backends[Backend.MONTY]
    original = backend.run
    calls = [0]

    async def crash_once(*args: Any, **kwargs: Any) -> ExecutionResult:
        calls[0] += 1
        if calls[0] == 1:
            from sandbox_client import Failure

            return ExecutionResult.failed(Failure.of(FailureKind.SANDBOX_CRASH, "boom"))
        return await original(*args, **kwargs)

    backend.run = crash_once
    try:
        with SandboxClient(durable_server.address) as client:
            crashed = client.execute("3", idempotency_key="k-crash")
            retried = client.execute("3", idempotency_key="k-crash")
    finally:
        backend.run = original
    assert crashed.failure is not None and crashed.failure.kind is FailureKind.SANDBOX_CRASH
    assert retried.ok and not retried.replayed and calls[0] == 2


# -- retention ---------------------------------------------------------------------------


async def test_expired_entries_are_purged(tmp_path: Path) -> None:
    now = [1000.0]
    journal = Durability(
        SqliteJournal(tmp_path / "j.sqlite3"),
        checkpoint_key=b"k",
        retention_s=60,
        clock=lambda: now[0],
    )
    pinned = Pinned(time_iso="2024-01-01T00:00:00", seed=1)
    journal.store.claim(Entry.running("", "old", digest="d", owner="o", pinned=pinned, now=now[0]))
    now[0] += 30
    journal.store.claim(Entry.running("", "new", digest="d", owner="o", pinned=pinned, now=now[0]))
    now[0] += 45  # "old" is 75 s old, "new" 45 s
    assert journal.purge() == 1
    assert journal.store.get("", "old") is None
    assert journal.store.get("", "new") is not None
    await journal.stop()


def test_the_checkpoint_key_is_generated_once_and_private(tmp_path: Path) -> None:
    key_file = tmp_path / "state" / "checkpoint.key"
    key = load_checkpoint_key(None, key_file)
    assert len(key) == 64 and key_file.stat().st_mode & 0o777 == 0o600
    assert load_checkpoint_key(None, key_file) == key
    assert load_checkpoint_key("configured", key_file) == b"configured"


# -- tool runs ---------------------------------------------------------------------------


def test_code_calls_tools_like_functions(durable_server: ServerThread) -> None:
    counter = Counter()
    with SandboxClient(durable_server.address) as client:
        outcome = client.run(THREE_TOOLS, tools=counter.tools())
    assert outcome.ok, outcome.failure
    assert outcome.result.result == {"first": 11, "second": "b11", "third": 2}
    assert outcome.result.stdout == "done 2\n"
    assert counter.calls == {"step_one": 1, "step_two": 1, "step_three": 1}


def test_a_replayed_tool_run_calls_no_tool(durable_server: ServerThread) -> None:
    counter = Counter()
    with SandboxClient(durable_server.address) as client:
        first = client.run(THREE_TOOLS, tools=counter.tools(), idempotency_key="k-tools")
        again = client.run(THREE_TOOLS, tools=counter.tools(), idempotency_key="k-tools")
    assert first.ok and again.result.replayed
    assert again.result.result == first.result.result
    assert counter.calls == {"step_one": 1, "step_two": 1, "step_three": 1}


def test_tool_errors_are_exceptions_the_code_can_catch(durable_server: ServerThread) -> None:
    def lookup(key: str) -> str:
        raise KeyError(key)

    code = "try:\n    lookup('x')\nexcept KeyError as e:\n    caught = str(e)\ncaught"
    with SandboxClient(durable_server.address) as client:
        outcome = client.run(code, tools={"lookup": lookup})
    assert outcome.ok and outcome.result.result == "'x'"


def test_an_uncaught_tool_error_is_tool_error(durable_server: ServerThread) -> None:
    def flaky() -> None:
        raise ValueError("upstream said no")

    with SandboxClient(durable_server.address) as client:
        result = client.run_tools("x = 1\nflaky()\n", tools={"flaky": flaky})
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.TOOL_ERROR
    assert failure.exception_type == "ValueError"
    assert failure.details["tool"] == "flaky" and failure.line == 2
    assert "upstream said no" in failure.message


def test_too_many_host_calls_say_so_with_the_cap(durable_server: ServerThread) -> None:
    code = "total = 0\nfor i in range(1200):\n    total += ping(i)\ntotal"
    with SandboxClient(durable_server.address, timeout_s=120) as client:
        result = client.run_tools(code, tools={"ping": lambda i: 1})
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR
    assert failure.details == {"limit": "host_calls", "limit_value": "1000"}
    assert "more than 1000 calls to the host" in failure.message and failure.line == 3


async def test_async_tools_the_code_gathers_run_concurrently(
    durable_server: ServerThread,
) -> None:
    async def fetch(name: str) -> str:
        await asyncio.sleep(0.3)
        return name.upper()

    async with AsyncSandboxClient(durable_server.address) as client:
        started = time.monotonic()
        outcome = await client.run(GATHERED, tools={"fetch": fetch})
        elapsed = time.monotonic() - started
    assert outcome.ok, outcome.failure
    assert outcome.result.result == ["A", "B", "C"]
    assert elapsed < 0.8  # three 0.3 s calls at once, not one after another


def test_undeclared_names_are_name_errors(durable_server: ServerThread) -> None:
    with SandboxClient(durable_server.address) as client:
        result = client.run_tools("secret_tool(1)", tools={})
    assert result.failure is not None and result.failure.kind is FailureKind.RUNTIME_ERROR
    assert result.failure.exception_type == "NameError"


def test_random_is_seeded_per_execution_and_time_passes(durable_server: ServerThread) -> None:
    code = (
        "import random, time\n"
        "a = time.time()\n"
        "time.sleep(0.2)\n"
        "[time.time() - a, random.random(), ping()]"
    )
    with SandboxClient(durable_server.address) as client:
        a = client.run_tools(code, tools={"ping": lambda: 1}, idempotency_key="k-pin-a")
        b = client.run_tools(code, tools={"ping": lambda: 1}, idempotency_key="k-pin-b")
    assert a.ok and b.ok
    assert a.result[0] >= 0.2  # clock reads are journaled, not frozen
    assert a.result[1] != b.result[1]  # seeded per execution, not a global constant


def test_clock_readings_are_journaled(durable_server: ServerThread) -> None:
    journal = durable_server.server.executor.journal
    assert journal is not None
    seen: list[float] = []

    def probe() -> int:
        entry = journal.store.get("local", "k-clock")
        assert entry is not None
        seen.extend(json.loads(a.answer_json) for a in entry.answers.values() if a.seq < 0)
        return 1

    code = "import time\nt = time.time()\nprobe()\nt"
    with SandboxClient(durable_server.address) as client:
        result = client.run_tools(code, tools={"probe": probe}, idempotency_key="k-clock")
    assert result.ok and seen == [result.result]


# -- interrupted runs, and tampered checkpoints -------------------------------------------


def answer_two_then_disconnect(address: str, code: str, key: str) -> list[str]:
    """A client that answers the first two tool calls and then vanishes."""
    seen: list[str] = []

    def third_call(msg: sandbox_pb2.RunResponse) -> bool:
        if msg.HasField("tool_call"):
            seen.append(msg.tool_call.name)
        return len(seen) == 3  # the third call arrives: the second answer is journaled

    drive_run(address, code, Counter().tools(), third_call, idempotency_key=key)
    return seen


def wait_until_suspended(srv: ServerThread, key: str) -> None:
    journal = srv.server.executor.journal
    assert journal is not None
    for _ in range(100):
        entry = journal.store.get("local", key) or journal.store.get("", key)
        if entry is not None and entry.checkpoint is not None and entry.checkpoint.seq == 2:
            return
        time.sleep(0.05)
    raise AssertionError("the run never reached its checkpoint")


def test_a_client_that_reconnects_resumes_without_calling_tools_again(
    durable_server: ServerThread,
) -> None:
    seen = answer_two_then_disconnect(durable_server.address, THREE_TOOLS, "k-reconnect")
    assert seen == ["step_one", "step_two", "step_three"]
    wait_until_suspended(durable_server, "k-reconnect")
    counter = Counter()
    with SandboxClient(durable_server.address) as client:
        outcome = client.run(THREE_TOOLS, tools=counter.tools(), idempotency_key="k-reconnect")
    assert outcome.ok, outcome.failure
    assert outcome.result.result == {"first": 11, "second": "b11", "third": 2}
    assert counter.calls == {"step_three": 1}
    assert outcome.result.stdout == "done 2\n"


def test_a_tampered_checkpoint_is_corrupt_state(durable_server: ServerThread) -> None:
    answer_two_then_disconnect(durable_server.address, THREE_TOOLS, "k-tamper")
    wait_until_suspended(durable_server, "k-tamper")
    path = durable_server.server.settings.journal.state_dir / "journal.sqlite3"
    with sqlite3.connect(path) as db:
        (blob,) = db.execute("SELECT checkpoint FROM executions WHERE key = 'k-tamper'").fetchone()
        flipped = bytearray(blob)
        flipped[len(flipped) // 2] ^= 0x01
        db.execute("UPDATE executions SET checkpoint = ? WHERE key = 'k-tamper'", (bytes(flipped),))
    counter = Counter()
    with SandboxClient(durable_server.address) as client:
        corrupt = client.run_tools(THREE_TOOLS, tools=counter.tools(), idempotency_key="k-tamper")
        assert corrupt.failure is not None
        assert corrupt.failure.kind is FailureKind.CORRUPT_STATE
        assert corrupt.failure.retryable
        assert counter.calls == {}  # nothing ran from the tampered state
        # CORRUPT_STATE is retried from a fresh run: tools are called again, once each.
        outcome = client.run(
            THREE_TOOLS,
            tools=counter.tools(),
            idempotency_key="k-tamper",
            recovery=RecoveryPolicy(wait_initial_s=0, wait_jitter_s=0),
        )
    assert outcome.ok
    assert counter.calls == {"step_one": 1, "step_two": 1, "step_three": 1}


def test_a_client_that_stops_answering_cancels_the_run_and_can_resume_it(
    durable_server: ServerThread,
) -> None:
    from sandbox_client._request import execute_request
    from sandbox_client._tool_run import start_message

    counter = Counter()
    first = start_message(execute_request(THREE_TOOLS, idempotency_key="k-halfclose"), {})
    first.start.tools.add(name="step_one")
    first.start.tools.add(name="step_two")
    first.start.tools.add(name="step_three")
    gate = threading.Event()

    def requests() -> Iterator[sandbox_pb2.RunRequest]:
        yield first
        gate.wait(10)  # then close our side, leaving the call unanswered

    with grpc.insecure_channel(durable_server.address) as channel:
        stream = ServiceStub(channel).Run(requests(), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            for msg in stream:
                if msg.HasField("tool_call"):
                    gate.set()
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    with SandboxClient(durable_server.address) as client:
        outcome = client.run(THREE_TOOLS, tools=counter.tools(), idempotency_key="k-halfclose")
    assert outcome.ok and counter.calls == {"step_one": 1, "step_two": 1, "step_three": 1}
