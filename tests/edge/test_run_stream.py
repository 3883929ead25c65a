"""The Run stream's relay (edge/run_stream.py) against what a client can do to it: never
answer a tool call, answer with something the server cannot read, or break the reader.
Each run must end on its own and give its Monty worker back."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandbox.edge import run_stream
from sandbox_client import ExecutionResult, FailureKind, SandboxClient
from sandbox_client._request import execute_request
from sandbox_client.protocol.convert import result_from_proto
from sandbox_client.protocol.service import ServiceStub
from sandbox_client.protocol.v1 import sandbox_pb2
from tests.conftest import ServerThread, running_server

WAIT_MS = 400
Answer = Callable[[sandbox_pb2.ToolCall], sandbox_pb2.RunRequest | None]


class RawRun:
    """One Run stream driven by hand: the start, then whatever `answer` returns for each
    tool call (None: no answer). The client's side stays open until the result is in,
    so a call it does not answer stays unanswered."""

    def __init__(
        self,
        address: str,
        code: str,
        tools: list[str],
        *,
        answer: Answer | None = None,
        async_tools: tuple[str, ...] = (),
        metadata: tuple[tuple[str, str], ...] = (),
        timeout_s: float = 60,
        **options: Any,
    ) -> None:
        self.calls: list[sandbox_pb2.ToolCall] = []
        self.result: ExecutionResult | None = None
        self.error: grpc.RpcError | None = None
        self.elapsed_s = 0.0
        self._address, self._answer, self._metadata = address, answer, metadata
        self._timeout_s = timeout_s
        start = sandbox_pb2.RunRequest(
            start=sandbox_pb2.RunStart(request=execute_request(code, **options))
        )
        for name in tools:
            start.start.tools.add(name=name)
        for name in async_tools:
            start.start.tools.add(name=name, is_async=True)
        self._start = start
        self._outgoing: queue.Queue[sandbox_pb2.RunRequest | None] = queue.Queue()
        self._thread = threading.Thread(target=self._drive, daemon=True)

    def __enter__(self) -> RawRun:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._outgoing.put(None)
        self._thread.join(self._timeout_s + 5)

    def wait(self) -> RawRun:
        self._thread.join(self._timeout_s + 5)
        return self

    def _requests(self) -> Iterator[sandbox_pb2.RunRequest]:
        yield self._start
        while (msg := self._outgoing.get()) is not None:
            yield msg

    def _drive(self) -> None:
        started = time.monotonic()
        with grpc.insecure_channel(self._address) as channel:
            stream = ServiceStub(channel).Run(
                self._requests(), timeout=self._timeout_s, metadata=self._metadata
            )
            try:
                for msg in stream:
                    if msg.HasField("tool_call"):
                        self.calls.append(msg.tool_call)
                        reply = self._answer(msg.tool_call) if self._answer else None
                        if reply is not None:
                            self._outgoing.put(reply)
                    elif msg.HasField("result"):
                        self.result = result_from_proto(msg.result)
            except grpc.RpcError as error:
                self.error = error
            finally:
                self.elapsed_s = time.monotonic() - started
                self._outgoing.put(None)


def run_raw(address: str, code: str, tools: list[str], **kwargs: Any) -> RawRun:
    with RawRun(address, code, tools, **kwargs) as run:
        return run.wait()


def value_answer(value_json: str) -> Answer:
    def answer(call: sandbox_pb2.ToolCall) -> sandbox_pb2.RunRequest:
        return sandbox_pb2.RunRequest(
            tool_result=sandbox_pb2.ToolResult(call_id=call.call_id, value_json=value_json)
        )

    return answer


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One Monty worker and no warm session: a run that kept its worker would starve
    every request after it."""
    policies = tmp_path_factory.mktemp("policies")
    (policies / "quick.toml").write_text(f"tool_wait_ms = {WAIT_MS}\n")
    with running_server(
        monty={"min_workers": 1, "max_workers": 1, "warm_sessions": 0, "checkout_timeout_s": 5},
        policies={"dir": policies, "default": "quick"},
    ) as srv:
        yield srv


def assert_worker_free(srv: ServerThread) -> None:
    with SandboxClient(srv.address, timeout_s=30) as client:
        result = client.execute("print(1)")
    assert result.ok and result.stdout == "1\n", result.failure


def test_an_unanswered_call_raises_timeout_error_in_the_code(one_worker: ServerThread) -> None:
    code = (
        "try:\n    lookup(1)\nexcept TimeoutError as e:\n    caught = str(e)\n"
        "try:\n    lookup(2)\nexcept TimeoutError as e:\n    again = str(e)\n"
        "[caught, again]"
    )
    run = run_raw(one_worker.address, code, ["lookup"])
    assert run.error is None and run.result is not None and run.result.ok, run.result
    caught, again = run.result.result
    assert f"no answer within {WAIT_MS / 1000:g} s" in caught
    # The client stopped answering: the second call is not sent, and fails at once.
    assert "left an earlier call ('lookup') unanswered" in again
    assert [c.name for c in run.calls] == ["lookup"]
    assert WAIT_MS / 1000 <= run.elapsed_s < WAIT_MS / 1000 + 10
    assert_worker_free(one_worker)


def test_an_uncaught_timeout_is_tool_error_naming_the_tool_and_the_wait(
    one_worker: ServerThread,
) -> None:
    run = run_raw(one_worker.address, "x = fetch_rows('t')\nx", ["fetch_rows"])
    assert run.result is not None and run.result.failure is not None
    failure = run.result.failure
    assert failure.kind is FailureKind.TOOL_ERROR, failure
    assert "fetch_rows" in failure.message and f"{WAIT_MS / 1000:g} s" in failure.message
    assert failure.exception_type == "TimeoutError"
    assert failure.details["tool"] == "fetch_rows"
    assert_worker_free(one_worker)


def test_gathered_async_calls_each_time_out(one_worker: ServerThread) -> None:
    code = (
        "import asyncio\n"
        "async def ask(n):\n"
        "    try:\n"
        "        return await (a() if n == 1 else b())\n"
        "    except TimeoutError:\n"
        "        return 'TimeoutError'\n"
        "async def main():\n"
        "    return await asyncio.gather(ask(1), ask(2))\n"
        "await main()\n"
    )
    run = run_raw(one_worker.address, code, [], async_tools=("a", "b"))
    assert run.result is not None and run.result.ok, run.result.failure if run.result else run.error
    assert run.result.result == ["TimeoutError", "TimeoutError"]
    assert sorted(c.name for c in run.calls) == ["a", "b"]  # both went out, at once
    assert run.elapsed_s < 2 * WAIT_MS / 1000 + 5
    assert_worker_free(one_worker)


def test_a_calls_answer_after_the_wait_is_ignored(one_worker: ServerThread) -> None:
    def late(call: sandbox_pb2.ToolCall) -> sandbox_pb2.RunRequest:
        time.sleep(WAIT_MS / 1000 * 2)
        return value_answer("42")(call)

    code = "try:\n    r = slow()\nexcept TimeoutError:\n    r = 'timed out'\nr"
    run = run_raw(one_worker.address, code, ["slow"], answer=late)
    assert run.result is not None and run.result.result == "timed out"
    assert_worker_free(one_worker)


@pytest.mark.parametrize(
    "value_json",
    [
        "[" * 100_000 + "]" * 100_000,  # RecursionError in json.loads, once fatal to the reader
        "{" * 50_000,
        "not json",
        "[" + "1, " * 400_000 + "1]",  # 1.2 MB: above inputs_bytes, never parsed on the loop
    ],
    ids=["nested-lists", "open-braces", "not-json", "too-large"],
)
def test_an_answer_the_server_cannot_read_is_a_value_error(
    one_worker: ServerThread, value_json: str
) -> None:
    code = "try:\n    r = tool()\nexcept ValueError as e:\n    r = 'ValueError: ' + str(e)\nr"
    run = run_raw(one_worker.address, code, ["tool"], answer=value_answer(value_json))
    assert run.error is None and run.result is not None, run.error
    assert run.result.ok, run.result.failure
    assert str(run.result.result).startswith("ValueError: the tool's answer")
    assert run.elapsed_s < WAIT_MS / 1000  # answered, not timed out
    assert_worker_free(one_worker)


def test_an_unknown_failure_kind_in_an_error_answer_is_no_kind(one_worker: ServerThread) -> None:
    def answer(call: sandbox_pb2.ToolCall) -> sandbox_pb2.RunRequest:
        error = sandbox_pb2.ToolError(exception_type="KeyError", message="gone", kind=9999)  # type: ignore[arg-type]
        return sandbox_pb2.RunRequest(
            tool_result=sandbox_pb2.ToolResult(call_id=call.call_id, error=error)
        )

    run = run_raw(one_worker.address, "tool()", ["tool"], answer=answer)
    assert run.result is not None and run.result.failure is not None
    assert run.result.failure.kind is FailureKind.TOOL_ERROR
    assert "tool_kind" not in run.result.failure.details
    assert run.elapsed_s < WAIT_MS / 1000
    assert_worker_free(one_worker)


def test_a_reader_that_dies_ends_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever kills the reader (here a fault injected into the relay), the run stops at
    once with UNAVAILABLE, instead of holding its worker for a wait nobody can end."""

    def broken(self: Any, msg: sandbox_pb2.ToolResult) -> None:
        raise RuntimeError("injected reader fault")

    monkeypatch.setattr(run_stream._StreamRelay, "answer", broken)
    (tmp_path / "slow.toml").write_text("tool_wait_ms = 600000\n")
    with running_server(
        monty={"min_workers": 1, "max_workers": 1, "warm_sessions": 0, "checkout_timeout_s": 5},
        policies={"dir": tmp_path, "default": "slow"},
    ) as srv:
        run = run_raw(srv.address, "tool()", ["tool"], answer=value_answer("1"))
        assert run.error is not None, run.result
        assert run.error.code() == grpc.StatusCode.UNAVAILABLE
        assert "could not read the tool answers" in (run.error.details() or "")
        assert run.elapsed_s < 10
        assert_worker_free(srv)
