"""The Run RPC's stream: tool answers in; output, tool calls and the final result out.
The edge decoded its start; the run itself is Executor.run_tools; this is only the wire.

A tool call waits for its answer at most the policy's `tool_wait_ms`; then the code sees
the call raise TimeoutError (journaled like any answer), and later calls of the run raise
it at once without going out: the client has stopped answering, and a run must not hold
its Monty worker or container slot for it. An answer the server cannot read (not JSON,
nested past what the parser takes, larger than the policy's `inputs_bytes`) is a
ValueError in the code; a reader that dies for any other reason ends the run."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog

from sandbox.backends.tools import ToolCallRequest, ToolReply
from sandbox.core.executor import Executor
from sandbox.core.output import StreamName
from sandbox.durable.tool_host import args_json, kwargs_json
from sandbox.edge.calls import Call
from sandbox.errors import Cancelled, Unavailable
from sandbox.policy.model import DEFAULT_POLICY, Policy
from sandbox_client.protocol.convert import output_chunk_to_proto
from sandbox_client.protocol.models import ExecutionResult, FailureKind
from sandbox_client.protocol.v1 import sandbox_pb2

log = structlog.get_logger("sandbox.run")

_Event = sandbox_pb2.RunResponse | None


class _StreamRelay:
    """ToolRelay over one stream: a call goes out as an event, its answer comes back
    through `answer()` from the reader."""

    def __init__(
        self,
        events: asyncio.Queue[_Event],
        wait_s: Callable[[], float],
        max_answer_bytes: Callable[[], int],
    ) -> None:
        self._events = events
        # The policy's tool_wait_ms and inputs_bytes, once the run is planned.
        self._wait_s = wait_s
        self._max_answer_bytes = max_answer_bytes
        self._waiting: dict[int, asyncio.Future[ToolReply]] = {}
        self._closed = False
        self._unanswered: tuple[str, float] | None = None  # the call that timed out
        self.failure: BaseException | None = None  # what killed the reader

    async def call(self, request: ToolCallRequest) -> ToolReply:
        answer: asyncio.Future[ToolReply] = asyncio.get_running_loop().create_future()
        if self._closed:
            answer.cancel()
        elif self._unanswered is not None:
            name, waited = self._unanswered
            return _timed_out(
                f"not sent: the client left an earlier call ({name!r}) unanswered for {waited:g} s"
            )
        wait_s = self._wait_s()
        self._waiting[request.seq] = answer
        self._events.put_nowait(
            sandbox_pb2.RunResponse(
                tool_call=sandbox_pb2.ToolCall(
                    call_id=request.seq,
                    name=request.name,
                    args_json=args_json(request.args),
                    kwargs_json=kwargs_json(request.kwargs),
                )
            )
        )
        try:
            async with asyncio.timeout(wait_s):
                return await answer
        except TimeoutError:
            if self._closed:
                raise asyncio.CancelledError from None
            self._unanswered = (request.name, wait_s)
            log.info("tool call unanswered", tool=request.name, call_id=request.seq, wait_s=wait_s)
            return _timed_out(f"no answer within {wait_s:g} s (the policy's tool_wait_ms)")
        finally:
            self._waiting.pop(request.seq, None)

    def close(self) -> None:
        """The client will send nothing more: calls left unanswered never will be. The
        run stops there (its journal entry stays, so the same key resumes it)."""
        self._closed = True
        for waiting in self._waiting.values():
            waiting.cancel()

    def fail(self, error: BaseException) -> None:
        """The reader died: no answer will be read, so the run ends now."""
        self.failure = error
        self.close()

    def answer(self, msg: sandbox_pb2.ToolResult) -> None:
        waiting = self._waiting.get(msg.call_id)
        if waiting is None or waiting.done():
            log.info("answer to no pending call", call_id=msg.call_id)
            return
        size, cap = len(msg.value_json), self._max_answer_bytes()
        if size > cap:
            # Parsing JSON holds the loop (8 MB: 0.1-0.2 s); an answer is an input to the
            # code, bounded like its inputs.
            waiting.set_result(
                ToolReply(
                    error_type="ValueError",
                    error_message=f"the tool's answer is {size} bytes; the policy's "
                    f"inputs_bytes allows {cap}",
                )
            )
            return
        waiting.set_result(_reply(msg))


def _timed_out(message: str) -> ToolReply:
    return ToolReply(error_type="TimeoutError", error_message=message)


def _reply(msg: sandbox_pb2.ToolResult) -> ToolReply:
    if msg.HasField("error"):
        # An enum number this server does not know is no kind at all (Name() raises).
        known = msg.error.kind in sandbox_pb2.FailureKind.values()
        kind = sandbox_pb2.FailureKind.Name(msg.error.kind) if msg.error.kind and known else ""
        return ToolReply(
            error_type=msg.error.exception_type or "RuntimeError",
            error_message=msg.error.message,
            error_kind=kind if kind in FailureKind.__members__ else "",
        )
    try:
        return ToolReply(value=json.loads(msg.value_json) if msg.value_json else None)
    except ValueError as exc:
        return ToolReply(
            error_type="ValueError", error_message=f"the tool's answer is not JSON: {exc}"
        )
    except RecursionError:
        return ToolReply(
            error_type="ValueError",
            error_message="the tool's answer is nested too deeply to read",
        )


async def serve_run(
    executor: Executor, call: Call, requests: AsyncIterator[Any]
) -> AsyncIterator[sandbox_pb2.RunResponse]:
    """The stream of a Run whose start the edge decoded into `call.request`: output and
    tool calls, until the run ends and `call.result` is set (the caller sends it, once
    the call is recorded). Raises RequestError for a run that cannot be served."""
    request = call.request
    assert request is not None
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[_Event] = asyncio.Queue()
    relay = _StreamRelay(
        events, lambda: _policy(call).tool_wait_ms / 1000, lambda: _policy(call).inputs_bytes
    )

    def forward(stream: StreamName, text: str) -> None:
        event = sandbox_pb2.RunResponse(output=output_chunk_to_proto(stream, text))
        loop.call_soon_threadsafe(events.put_nowait, event)

    async def run() -> ExecutionResult:
        try:
            return await executor.run_tools(request, call.trace, relay, on_output=forward)
        finally:
            loop.call_soon_threadsafe(events.put_nowait, None)

    async def read() -> None:
        try:
            async for msg in requests:
                if hasattr(msg, "HasField") and msg.HasField("tool_result"):
                    relay.answer(msg.tool_result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("the tool-answer reader failed", error=repr(exc))
            relay.fail(exc)
            raise
        relay.close()

    task = asyncio.create_task(run())
    reader = asyncio.create_task(read())
    try:
        while (event := await events.get()) is not None:
            yield event
        try:
            call.result = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the RPC itself was cancelled
            if relay.failure is not None:
                raise Unavailable(
                    "the server could not read the tool answers "
                    f"({type(relay.failure).__name__}); the run was stopped and the same "
                    "idempotency key resumes it",
                    retry_after_ms=0,
                ) from None
            raise Cancelled(
                "the client closed the stream with tool calls unanswered; "
                "the same idempotency key resumes the run"
            ) from None
    finally:
        for pending in (task, reader):
            if not pending.done():
                pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


def _policy(call: Call) -> Policy:
    plan = call.trace.plan
    # A call is only made once the run is planned; the default policy otherwise.
    return plan.policy if plan is not None else DEFAULT_POLICY
