"""The host's side of a container tool run: call frames from the runner become
ToolCallRequests for a ToolHost (the same Protocol Monty tool runs answer through), and
its answers become reply frames on the container's stdin.

The conversation with the runner blocks on a worker thread (conversation.py), while
answers come from the event loop (the client's stream, or the journal when a run is
replayed). `ToolBridge.answer()` runs on that thread: it hands each call to the loop with
`run_coroutine_threadsafe` and waits. `cancel()`, from the loop, wakes it when the run is
cancelled; a failure of the host (CheckpointMismatch, or a bug) stops the run too, and
`reraise()` raises it on the loop afterwards.

Every call frame is checked before a tool is asked anything: the next number in
sequence, a declared tool, argument lists. The runner only writes such frames, but the
code runs in the runner's process and can write to its fds too; a frame that breaks the
protocol stops the run (ForgedFrame), and a well-formed one is a tool call like any
other (the code could have made it by calling the function)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Mapping
from typing import Any

from sandbox.backends.container.protocol import ForgedFrame, error_reply_frame, reply_frame
from sandbox.backends.tools import InjectedToolError, ToolCallRequest, ToolHost, ToolReply


class RelayStopped(Exception):
    """The run must stop here: it was cancelled, or its ToolHost failed."""


class ToolBridge:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, host: ToolHost, tools: Mapping[str, bool]
    ) -> None:
        self._loop = loop
        self._host = host
        self.tools = dict(tools)
        self.calls = 0  # call frames accepted
        self.tool_errors: dict[int, InjectedToolError] = {}  # error answers, by call
        self.failure: BaseException | None = None  # what the host raised
        self.cancelled = False
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future[ToolReply] | None = None

    def answer(self, frame: dict[str, Any]) -> dict[str, Any]:
        """The reply frame for call `frame`, once the host answers it (blocks; worker
        thread only). Raises ForgedFrame or RelayStopped."""
        request = self._request(frame)
        future = asyncio.run_coroutine_threadsafe(self._ask(request), self._loop)
        with self._lock:
            if self.cancelled:
                future.cancel()
            self._pending = future
        try:
            reply = future.result()
        except concurrent.futures.CancelledError:
            self.cancelled = True
            raise RelayStopped("cancelled") from None
        except BaseException as exc:
            self.failure = exc
            raise RelayStopped(f"the tool host failed: {type(exc).__name__}") from exc
        finally:
            with self._lock:
                self._pending = None
        if not reply.error_type:
            return reply_frame(request.seq, reply.value)
        error = InjectedToolError(
            seq=request.seq,
            tool=request.name,
            exception_type=reply.error_type,
            message=reply.error_message,
            kind=reply.error_kind,
        )
        self.tool_errors[request.seq] = error
        return error_reply_frame(
            error.seq, error_type=error.exception_type, message=error.message, kind=error.kind
        )

    def _request(self, frame: dict[str, Any]) -> ToolCallRequest:
        seq, name = frame.get("seq"), frame.get("name")
        args, kwargs = frame.get("args"), frame.get("kwargs")
        due = self.calls + 1
        if type(seq) is not int or seq != due:
            raise ForgedFrame(f"a tool call numbered {seq!r} where call {due} was due")
        if not isinstance(name, str) or name not in self.tools:
            raise ForgedFrame(f"a call to {str(name)[:100]!r}, which is not a declared tool")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ForgedFrame(f"a call to {name!r} without its argument lists")
        self.calls = seq
        return ToolCallRequest(seq=seq, name=name, args=tuple(args), kwargs=kwargs)

    async def _ask(self, request: ToolCallRequest) -> ToolReply:
        return await self._host.ask(request)

    def cancel(self) -> None:
        """Stops the run (from the loop): a call waiting for its answer gives up now."""
        with self._lock:
            self.cancelled = True
            pending = self._pending
        if pending is not None:
            pending.cancel()

    def reraise(self) -> None:
        """After the run (on the loop): what stopped it, if the host or a cancel did."""
        if self.failure is not None:
            raise self.failure
        if self.cancelled:
            raise asyncio.CancelledError
