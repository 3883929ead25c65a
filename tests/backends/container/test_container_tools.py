"""Tool runs in real containers: the runner relays calls over its frame protocol, the
server answers them through the same journal as Monty tool runs, and a run whose server
died is replayed from the start with answered calls taken from the journal."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.durable.journal import ToolAnswer
from sandbox_client import (
    AsyncSandboxClient,
    Backend,
    EscalationRequired,
    ExecutionResult,
    FailureKind,
    Limits,
    SandboxClient,
)
from sandbox_client.protocol.convert import result_from_proto
from sandbox_client.protocol.v1 import sandbox_pb2
from tests.backends.container.conftest import IMAGE, SCOPE
from tests.conftest import ServerThread, drive_run
from tests.durable.test_durable import GATHERED, THREE_TOOLS, Counter
from tests.durable.test_recovery_kill import Server as MontyServer
from tests.durable.test_recovery_kill import survives_server_kill

pytestmark = pytest.mark.docker

# The runner's protocol fds: its stdin reader, then its frame writer (PRIVATE_FD_MIN).
RUNNER_OUT_FD = 201


def container_run(srv: ServerThread, code: str, tools: dict[str, Any], **fields: Any) -> Any:
    with SandboxClient(srv.address, timeout_s=60) as client:
        return client.run_tools(code, tools=tools, backend="container", **fields)


def test_a_container_tool_run_returns_what_monty_returns(both_backends: ServerThread) -> None:
    results = {}
    for backend in (Backend.MONTY, Backend.CONTAINER):
        counter = Counter()
        with SandboxClient(both_backends.address, timeout_s=60) as client:
            outcome = client.run(THREE_TOOLS, tools=counter.tools(), backend=backend)
        assert outcome.ok, outcome.failure
        assert outcome.result.backend is backend
        assert counter.calls == {"step_one": 1, "step_two": 1, "step_three": 1}
        results[backend] = (outcome.result.result, outcome.result.stdout)
    assert results[Backend.CONTAINER] == results[Backend.MONTY]
    assert results[Backend.CONTAINER] == ({"first": 11, "second": "b11", "third": 2}, "done 2\n")


# Lone surrogates are a str in CPython but no Unicode text: print('\\ud800') in a container
# came back as INFRA_UNAVAILABLE (the response could not be serialised), retried 6 times.
SURROGATES = "import sys\nprint('a\\ud800b')\nprint('\\udfff', file=sys.stderr)\n'\\ud83d\\ude00'"


def test_lone_surrogates_come_back_replaced_as_monty_shows_them(
    both_backends: ServerThread,
) -> None:
    seen = {}
    with SandboxClient(both_backends.address, timeout_s=60) as client:
        for backend in (Backend.MONTY, Backend.CONTAINER):
            result = client.execute(SURROGATES, backend=backend)
            assert result.ok, result.failure
            assert result.backend is backend
            seen[backend] = (result.stdout, result.stderr, result.result)
        chunks = list(client.execute_stream(SURROGATES, backend=Backend.CONTAINER))
    assert seen[Backend.CONTAINER] == seen[Backend.MONTY]
    assert seen[Backend.CONTAINER] == ("a\ufffdb\n", "\ufffd\n", "\ufffd\ufffd")
    streamed = chunks.pop()
    assert isinstance(streamed, ExecutionResult) and streamed.ok, streamed
    assert "".join(c.text for c in chunks if c.stream == "stdout") == "a\ufffdb\n"

    # In a tool call's arguments too: the tool gets the replacement, not a surrogate.
    got: list[Any] = []
    result = container_run(
        both_backends,
        "echo('x\\ud800', k=['\\udc00'])",
        {"echo": lambda *a, **k: got.append((a, k))},
    )
    assert result.ok, result.failure
    assert got == [(("x\ufffd",), {"k": ["\ufffd"]})]


def test_output_printed_before_a_call_reaches_the_client_before_the_call(
    both_backends: ServerThread,
) -> None:
    code = "print('a')\nping()\nprint('b')\nping()\nprint('c')"
    leg = interrupted_leg(
        both_backends, code, "k-container-order", {"ping": lambda: None}, stop_at=None
    )
    assert leg.events == ["out a\n", "call ping", "out b\n", "call ping", "out c\n"]
    assert leg.result is not None and leg.result.stdout == "a\nb\nc\n"


def test_a_tool_error_is_an_exception_the_code_catches(both_backends: ServerThread) -> None:
    def lookup(key: str) -> str:
        raise KeyError(key)

    code = (
        "try:\n    lookup('x')\nexcept KeyError as e:\n    caught = str(e)\n"
        "try:\n    later()\nexcept RuntimeError as e:\n    other = str(e)\n"
        "[caught, other]"
    )

    class Unusual(Exception):
        pass

    def later() -> None:
        raise Unusual("no builtin of that name")

    result = container_run(both_backends, code, {"lookup": lookup, "later": later})
    assert result.ok, result.failure
    # KeyError is CPython's own; a type CPython lacks arrives as RuntimeError, as in Monty.
    assert result.result == ["'x'", "Unusual: no builtin of that name"]


def test_an_uncaught_tool_error_is_tool_error(both_backends: ServerThread) -> None:
    def flaky() -> None:
        raise ValueError("upstream said no")

    result = container_run(both_backends, "x = 1\nflaky()\n", {"flaky": flaky})
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.TOOL_ERROR
    assert failure.exception_type == "ValueError"
    assert failure.details["tool"] == "flaky" and failure.line == 2
    assert failure.message == "tool 'flaky' raised ValueError: upstream said no (line 2: flaky())"
    assert result.backend is Backend.CONTAINER


def test_the_codes_own_exception_is_not_a_tool_error(both_backends: ServerThread) -> None:
    code = "try:\n    flaky()\nexcept ValueError:\n    pass\nraise ValueError('mine')"
    result = container_run(both_backends, code, {"flaky": lambda: int("x")})
    assert result.failure is not None
    assert result.failure.kind is FailureKind.RUNTIME_ERROR, result.failure


async def test_async_tools_gathered_in_a_container(both_backends: ServerThread) -> None:
    order: list[str] = []

    async def fetch(name: str) -> str:
        order.append(name)
        await asyncio.sleep(0.05)
        return name.upper()

    async with AsyncSandboxClient(both_backends.address, timeout_s=60) as client:
        outcome = await client.run(GATHERED, tools={"fetch": fetch}, backend="container")
    assert outcome.ok, outcome.failure
    assert outcome.result.result == ["A", "B", "C"]
    assert order == ["a", "b", "c"]  # relayed one at a time, in call order


def test_a_non_json_argument_is_a_type_error_in_the_code(both_backends: ServerThread) -> None:
    calls: list[Any] = []
    code = (
        "try:\n    record({1, 2})\nexcept TypeError as e:\n    msg = str(e)\n"
        "try:\n    record(float('nan'))\nexcept TypeError as e:\n    nan = str(e)\n"
        "[msg, nan, record([1, (2, 3)], key={'k': None})]"
    )
    result = container_run(
        both_backends, code, {"record": lambda *a, **k: calls.append((a, k)) or 7}
    )
    assert result.ok, result.failure
    assert result.result[0] == "record() takes JSON values only: a set is not a JSON value"
    assert "record() takes JSON values only" in result.result[1]
    assert result.result[2] == 7
    assert calls == [(([1, [2, 3]],), {"key": {"k": None}})]  # only the JSON call went out


def test_time_waiting_for_a_tool_is_not_charged(both_backends: ServerThread) -> None:
    def slow() -> str:
        time.sleep(1.5)
        return "late"

    limits = Limits(wall_time_ms=1000)
    result = container_run(
        both_backends, "a = slow()\nb = slow()\n[a, b]", {"slow": slow}, limits=limits
    )
    assert result.ok, result.failure
    assert result.result == ["late", "late"]
    assert result.usage.wall_ms < 1000  # the code's own time, not the tools'
    busy = container_run(both_backends, "while True:\n    pass", {}, limits=limits)
    assert busy.failure is not None and busy.failure.kind is FailureKind.TIMEOUT


def test_auto_falls_back_only_before_the_first_tool_call(both_backends: ServerThread) -> None:
    counter = Counter()
    tools = counter.tools()
    code = "import zipfile\nstep_one(zipfile.ZIP_STORED)"
    with SandboxClient(both_backends.address, timeout_s=60) as client:
        moved = client.run_tools(code, tools=tools, backend="auto")
        assert moved.ok, moved.failure
        assert moved.result == 10
        assert (moved.backend, moved.fallback_from) == (Backend.CONTAINER, Backend.MONTY)
        # Monty called a tool before it met what it lacks: no second run elsewhere.
        stays = client.run_tools("step_one(1)\nimport zipfile\n1", tools=tools, backend="auto")
    assert stays.failure is not None and stays.failure.kind is FailureKind.UNSUPPORTED
    assert stays.backend is Backend.MONTY
    assert counter.calls == {"step_one": 2}


# -- code that writes to the runner's private channel ---------------------------------------


def forged(frame: dict[str, Any]) -> str:
    """Code that writes `frame` to the runner's frame channel itself, numbered for its
    job (a fresh container's first) as the runner's own frames are."""
    line = json.dumps({**frame, "j": 1}).encode() + b"\n"
    return f"import os\nos.write({RUNNER_OUT_FD}, {line!r})\n"


def test_frames_the_code_forges_do_not_break_the_host(both_backends: ServerThread) -> None:
    counter = Counter()
    tools = counter.tools()

    # A call out of sequence: stopped before any tool runs.
    call = {"t": "call", "seq": 9, "name": "step_one", "args": [1], "kwargs": {}}
    result = container_run(both_backends, forged(call) + "step_one(1)", tools)
    assert result.failure is not None and result.failure.kind is FailureKind.POLICY_VIOLATION
    assert "call 1 was due" in result.failure.message
    assert counter.calls == {}

    # A call to something that is not a declared tool.
    call = {"t": "call", "seq": 1, "name": "open", "args": [], "kwargs": {}}
    result = container_run(both_backends, forged(call), tools)
    assert result.failure is not None and result.failure.kind is FailureKind.POLICY_VIOLATION
    assert "not a declared tool" in result.failure.message

    # A well-formed next call is a tool call like any other (the code could have made it
    # by calling the function); the runner's own call is then out of sequence.
    call = {"t": "call", "seq": 1, "name": "step_one", "args": [5], "kwargs": {}}
    result = container_run(both_backends, forged(call) + "step_one(1)", tools)
    assert result.failure is not None and result.failure.kind is FailureKind.POLICY_VIOLATION
    assert counter.calls == {"step_one": 1}

    # A reply written the wrong way round means nothing to the host.
    reply = {"t": "reply", "seq": 1, "value": 666}
    result = container_run(both_backends, forged(reply) + "step_one(1)", tools)
    assert result.ok and result.result == 11

    # Garbage on the channel is the code's doing too. The same code would write it
    # again, so the SDK escalates at once instead of retrying it.
    garbage = f"import os\nos.write({RUNNER_OUT_FD}, b'not a frame\\n')\nstep_one(1)"
    calls_before = dict(counter.calls)
    result = container_run(both_backends, garbage, tools)
    assert result.failure is not None and result.failure.kind is FailureKind.POLICY_VIOLATION
    assert not result.failure.retryable
    with (
        SandboxClient(both_backends.address, timeout_s=60) as client,
        pytest.raises(EscalationRequired) as escalated,
    ):
        client.run(garbage, tools=tools, backend=Backend.CONTAINER)
    assert len(escalated.value.escalation.attempts) == 1
    assert counter.calls == calls_before  # stopped before its call, both times

    # The server is fine afterwards.
    assert container_run(both_backends, THREE_TOOLS, Counter().tools()).ok
    with SandboxClient(both_backends.address) as client:
        assert client.execute("print(1)", backend="container").stdout == "1\n"


# -- interrupted runs are replayed -----------------------------------------------------------


@dataclass
class Leg:
    events: list[str] = field(default_factory=list)  # "out TEXT" and "call NAME", in order
    running: set[str] = field(default_factory=set)  # containers running at the stop
    result: ExecutionResult | None = None


def interrupted_leg(
    srv: ServerThread, code: str, key: str, tools: dict[str, Any], *, stop_at: int | None = 3
) -> Leg:
    """A container tool run over the raw stream: answers calls until call `stop_at`
    arrives (the previous answer is journaled by then), then cancels the stream."""
    backend: Any = srv.server.executor.backends[Backend.CONTAINER]
    leg = Leg()
    calls = 0

    def record(msg: sandbox_pb2.RunResponse) -> bool:
        nonlocal calls
        if msg.HasField("output"):
            leg.events.append(f"out {msg.output.text}")
        elif msg.HasField("tool_call"):
            calls += 1
            leg.events.append(f"call {msg.tool_call.name}")
            if calls == stop_at:
                leg.running = backend.running_ids()
                return True
        elif msg.HasField("result"):
            leg.result = result_from_proto(msg.result)
        return False

    drive_run(srv.address, code, tools, record, idempotency_key=key, backend="container")
    return leg


def test_a_reconnecting_client_gets_a_replay_that_calls_no_tool_twice(
    both_backends: ServerThread,
) -> None:
    code = "import random\nr = random.random()\nprint('r', r)\n" + THREE_TOOLS
    first = Counter()
    leg = interrupted_leg(both_backends, code, "k-container-replay", first.tools())
    assert first.calls == {"step_one": 1, "step_two": 1} and len(leg.running) == 1
    printed = leg.events[0]
    assert printed.startswith("out r 0.")
    backend: Any = both_backends.server.executor.backends[Backend.CONTAINER]
    for _ in range(100):  # the cancelled run's container is killed and removed
        if not leg.running & set(both_backends.call(backend.containers())):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the cancelled run's container is still there")

    again = Counter()
    with SandboxClient(both_backends.address, timeout_s=60) as client:
        outcome = client.run(
            code, tools=again.tools(), idempotency_key="k-container-replay", backend="container"
        )
    assert outcome.ok, outcome.failure
    assert again.calls == {"step_three": 1}
    value = outcome.result.result
    assert value == {"first": 11, "second": "b11", "third": 2}
    # Printed by the replay, once; `random` drew from the run's pinned seed both times.
    assert outcome.result.stdout == printed.removeprefix("out ") + "done 2\n"


def test_a_replay_that_calls_another_tool_is_corrupt_state(both_backends: ServerThread) -> None:
    journal = both_backends.server.executor.journal
    assert journal is not None
    interrupted_leg(both_backends, THREE_TOOLS, "k-container-diverge", Counter().tools())
    entry = journal.store.get("local", "k-container-diverge")
    assert entry is not None and sorted(a for a in entry.answers if a > 0) == [1, 2]
    # Make the journal say call 2 went elsewhere, as a replay that diverged would find.
    journal.store.record_answer(
        "local",
        "k-container-diverge",
        ToolAnswer(
            seq=2, name="other", args_json="[]", kwargs_json="{}", answer_json='{"value": 1}'
        ),
        now=time.time(),
    )
    counter = Counter()
    result = container_run(
        both_backends, THREE_TOOLS, counter.tools(), idempotency_key="k-container-diverge"
    )
    assert result.failure is not None and result.failure.kind is FailureKind.CORRUPT_STATE
    assert result.failure.retryable and counter.calls == {}


class ContainerServer(MontyServer):
    """`sandbox serve` with the container backend, restartable on the same journal."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.config.write_text(
            self.config.read_text()
            + f"[container]\nenabled = true\nimage = '{IMAGE}'\n"
            + f"pool_size = 1\nscope = '{SCOPE}'\n"
        )


def test_a_container_run_survives_the_server_being_killed_after_the_second_answer(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    with ContainerServer(tmp_path) as server:
        outcome = survives_server_kill(server, "container-server-killed", backend="container")
    assert outcome.result.backend is Backend.CONTAINER
