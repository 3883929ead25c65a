"""The Run RPC's stream: tool answers in; output, tool calls and the final result out.
The edge decoded its start; the run itself is Executor.run_tools; this is only the wire."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import structlog

from sandbox.backends.tools import ToolCallRequest, ToolReply
from sandbox.core.executor import Executor
from sandbox.core.output import StreamName
from sandbox.durable.tool_host import args_json, kwargs_json
from sandbox.edge.calls import Call
from sandbox.errors import Cancelled
from sandbox_client.protocol.convert import output_chunk_to_proto
from sandbox_client.protocol.models import ExecutionResult, FailureKind
from sandbox_client.protocol.v1 import sandbox_pb2

log = structlog.get_logger("sandbox.run")

_Event = sandbox_pb2.RunResponse | None


class _StreamRelay:
    """ToolRelay over one stream: a call goes out as an event, its answer comes back
    through `answer()` from the reader."""

    def __init__(self, events: asyncio.Queue[_Event]) -> None:
        self._events = events
        self._waiting: dict[int, asyncio.Future[ToolReply]] = {}
        self._closed = False

    async def call(self, request: ToolCallRequest) -> ToolReply:
        answer: asyncio.Future[ToolReply] = asyncio.get_running_loop().create_future()
        if self._closed:
            answer.cancel()
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
            return await answer
        finally:
            self._waiting.pop(request.seq, None)

    def close(self) -> None:
        """The client will send nothing more: calls left unanswered never will be. The
        run stops there (its journal entry stays, so the same key resumes it)."""
        self._closed = True
        for waiting in self._waiting.values():
            waiting.cancel()

    def answer(self, msg: sandbox_pb2.ToolResult) -> None:
        waiting = self._waiting.get(msg.call_id)
        if waiting is None or waiting.done():
            log.info("answer to no pending call", call_id=msg.call_id)
            return
        waiting.set_result(_reply(msg))


def _reply(msg: sandbox_pb2.ToolResult) -> ToolReply:
    if msg.HasField("error"):
        kind = sandbox_pb2.FailureKind.Name(msg.error.kind) if msg.error.kind else ""
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
    relay = _StreamRelay(events)

    def forward(stream: StreamName, text: str) -> None:
        event = sandbox_pb2.RunResponse(output=output_chunk_to_proto(stream, text))
        loop.call_soon_threadsafe(events.put_nowait, event)

    async def run() -> ExecutionResult:
        try:
            return await executor.run_tools(request, call.trace, relay, on_output=forward)
        finally:
            loop.call_soon_threadsafe(events.put_nowait, None)

    async def read() -> None:
        async for msg in requests:
            if hasattr(msg, "HasField") and msg.HasField("tool_result"):
                relay.answer(msg.tool_result)
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
