"""The Batch stream: many executions on one call, results out as they finish.

The edge admitted the call (one concurrency slot, one rate token, calls.py); here the
batch takes up to `[batch] window - 1` more of its tenant's free slots (Access.reserve),
never more than its `max_concurrent`, and grants that many items in flight as its first
event. Each item is decoded, run (Executor.execute: planned, at most once per key
through the journal), recorded and answered on its own; an item that cannot run is a
result carrying its failure (the RequestError's kind, message, field and retry_after_ms),
so one bad item never ends the stream. Every item takes a rate token: one the tenant
lacks is waited for, so a batch runs at its tenant's rate rather than failing.

What ends the stream with a status instead: a message whose bytes do not parse (its
item_id cannot be read, so no result could name it; items in flight finish first), and
a stream idle, with nothing in flight, for `[batch] idle_timeout_s`. An item sent while
the window is full is answered at once as THROTTLED (it did not run; send it again after
a result). An item reusing an idempotency key of an earlier item of the same stream is
INVALID_REQUEST: one key names one execution. When the caller goes away, the items in
flight are cancelled (a keyed item's journal entry is forgotten, so its key runs it
again), and items already answered stay recorded: resending the batch with the same keys
replays them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog

from sandbox.config import BatchSettings
from sandbox.core.executor import Executor
from sandbox.edge import decode
from sandbox.edge.calls import Call, Edge, Undecodable
from sandbox.errors import InvalidRequest, RequestError, Throttled
from sandbox_client.protocol.convert import result_to_proto
from sandbox_client.protocol.models import ExecutionResult, Failure
from sandbox_client.protocol.v1 import sandbox_pb2

log = structlog.get_logger("sandbox.batch")

_Event = sandbox_pb2.BatchResult | None
# What one response message carries at most besides its results' own bytes.
_FRAMING_BYTES = 64 * 1024


def refused_result(error: RequestError) -> ExecutionResult:
    """An item that could not run, as a result: the failure a unary call would have got
    as its status (kind, message, retry_after_ms, and ErrorInfo's field and metadata)."""
    return ExecutionResult.failed(
        Failure.of(
            error.kind,
            error.message,
            retry_after_ms=error.retry_after_ms,
            details=error.error_info,
        )
    )


class _Batch:
    """One stream's state: the window, the items in flight, the keys seen."""

    def __init__(
        self, executor: Executor, edge: Edge, call: Call, window: int, settings: BatchSettings
    ) -> None:
        self.executor = executor
        self.edge = edge
        self.tenant = call.tenant
        self.window = window
        self.idle_timeout_s = settings.idle_timeout_s
        self.events: asyncio.Queue[_Event] = asyncio.Queue(maxsize=2 * window)
        self.in_flight = 0
        self.running: set[asyncio.Task[None]] = set()
        # Digests, not the keys themselves: a stream may carry many items.
        self.keys: set[bytes] = set()
        self.last_activity = time.monotonic()
        self.stream_error: RequestError | None = None

    async def read(self, requests: AsyncIterator[Any]) -> None:
        """Reads items until the client half-closes, then waits for those in flight."""
        try:
            async for msg in requests:
                self.last_activity = time.monotonic()
                if isinstance(msg, Undecodable):
                    self.stream_error = InvalidRequest(
                        f"a batch message could not be decoded: {msg.error}"
                    )
                    break
                for entry in msg.items:
                    await self._admit(int(entry.item_id), entry.request)
            while self.running:
                await asyncio.wait(set(self.running))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the transport's; the items in flight are cancelled
            log.warning("the batch's reader failed", error=repr(exc))
            self.stream_error = InvalidRequest(f"the batch's messages could not be read: {exc}")
        await self.events.put(None)

    async def watch_idle(self, reader: asyncio.Task[None]) -> None:
        """Ends a stream that sends nothing with nothing in flight for idle_timeout_s."""
        step = min(1.0, self.idle_timeout_s / 4)
        while not reader.done():
            await asyncio.sleep(step)
            idle = time.monotonic() - self.last_activity
            if self.in_flight == 0 and idle >= self.idle_timeout_s:
                self.stream_error = InvalidRequest(
                    f"the batch sent no item for {self.idle_timeout_s:g} s with none in "
                    "flight ([batch] idle_timeout_s); send items, or half-close when done",
                    field="items",
                )
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                await self.events.put(None)
                return

    async def _admit(self, item_id: int, request: sandbox_pb2.ExecuteRequest) -> None:
        if self.in_flight >= self.window:
            await self._answer(item_id, refused_result(self._over_window()))
            return
        self.in_flight += 1
        task = asyncio.create_task(self._item(item_id, request))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    def _over_window(self) -> Throttled:
        return Throttled(
            f"the item was sent while {self.window} items (the batch's window) were in "
            "flight; it did not run: send it again once a result comes back",
            field="item_id",
            metadata={"quota": "batch_window", "limit_value": str(self.window)},
        )

    async def _item(self, item_id: int, msg: sandbox_pb2.ExecuteRequest) -> None:
        call = Call(method="Batch", tenant=self.tenant)
        error: RequestError | None = None
        try:
            call.request = request = decode.request_of(msg, tenant=self.tenant, method="Batch")
            self._claim_key(request.idempotency_key)
            await self._rate_token()
            call.result = await self.executor.execute(request, call.trace)
            result = call.result
        except RequestError as refusal:
            error, result = refusal, refused_result(refusal)
        finally:
            self.in_flight -= 1
        await self.edge.record(call, error)
        await self._answer(item_id, result)

    def _claim_key(self, key: str) -> None:
        if not key:
            return
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in self.keys:
            raise InvalidRequest(
                "idempotency_key is used by an earlier item of this batch; one key names "
                "one execution",
                field="idempotency_key",
            )
        self.keys.add(digest)

    async def _rate_token(self) -> None:
        while True:
            try:
                self.edge.access.take_token(self.tenant)
                return
            except Throttled as over:
                await asyncio.sleep(over.retry_after_ms / 1000)

    async def _answer(self, item_id: int, result: ExecutionResult) -> None:
        self.last_activity = time.monotonic()
        await self.events.put(
            sandbox_pb2.BatchResult(item_id=item_id, result=result_to_proto(result))
        )

    async def responses(self, max_bytes: int) -> AsyncIterator[sandbox_pb2.BatchResponse]:
        """The results as they come, as many in one message as are ready and fit."""
        room = max(1, max_bytes - _FRAMING_BYTES)
        pending: sandbox_pb2.BatchResult | None = None
        while True:
            first = pending if pending is not None else await self.events.get()
            pending = None
            if first is None:
                return
            results, size, ended = [first], first.ByteSize(), False
            while not self.events.empty():
                more = self.events.get_nowait()
                if more is None:
                    ended = True
                    break
                if size + more.ByteSize() > room:
                    pending = more
                    break
                results.append(more)
                size += more.ByteSize()
            yield sandbox_pb2.BatchResponse(results=results)
            if ended:
                return


async def serve_batch(
    executor: Executor,
    edge: Edge,
    call: Call,
    requests: AsyncIterator[Any],
    settings: BatchSettings,
) -> AsyncIterator[sandbox_pb2.BatchResponse]:
    """The events of one admitted Batch call: the window, then one result per item.
    Raises RequestError for a stream that ends badly (see the module docstring)."""
    reserved = edge.access.reserve(call.tenant, settings.window - 1)
    batch = _Batch(executor, edge, call, 1 + reserved, settings)
    reader = asyncio.create_task(batch.read(requests))
    watchdog = asyncio.create_task(batch.watch_idle(reader))
    try:
        yield sandbox_pb2.BatchResponse(window=sandbox_pb2.BatchWindow(items=batch.window))
        async for response in batch.responses(executor.max_message_bytes):
            yield response
        if batch.stream_error is not None:
            raise batch.stream_error
    finally:
        for task in (watchdog, reader, *batch.running):
            task.cancel()
        for task in (watchdog, reader, *batch.running):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        edge.access.release(call.tenant, reserved)
        log.debug("batch ended", tenant=call.tenant, window=batch.window)
