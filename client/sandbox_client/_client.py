"""SandboxClient and AsyncSandboxClient. As httpx's BaseClient, Client and AsyncClient:
one base holds everything but I/O (settings, the channel's set-up, building requests,
deadlines, run()'s state), and the twins only make the calls, with identical signatures.
The options every execution method takes are one TypedDict (ExecuteOptions), so the
twins' signatures cannot drift."""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar, Unpack

import grpc
import grpc.aio

from ._auth import async_channel, sync_channel
from ._batch import (
    DEFAULT_CONCURRENCY,
    InOrder,
    Item,
    Outbox,
    Prepared,
    answers_of,
    keep_failure,
    prepare,
    unanswered,
    window_of,
)
from ._request import (
    DEFAULT_TARGET,
    BackendName,
    ExecuteOptions,
    OutputChunk,
    Session,
    execute_request,
    failed_result,
    refused,
    session_from_proto,
    session_request,
    stream_event,
)
from ._tool_run import (
    Answers,
    call_tool_async,
    call_tool_sync,
    event_of,
    invocation,
    no_result,
    start_message,
)
from .protocol.convert import result_from_proto
from .protocol.models import Backend, ExecutionResult, Limits
from .protocol.service import ServiceStub
from .protocol.v1 import sandbox_pb2
from .recovery._models import Outcome, RecoveryPolicy
from .recovery._run import (
    AsyncEscalationHandler,
    AsyncRepairFn,
    EscalationHandler,
    RepairFn,
    run_async,
    run_sync,
)
from .recovery._state import RunState
from .tools import Tools

ChannelOptions = Sequence[tuple[str, Any]]
ChannelT = TypeVar("ChannelT", grpc.Channel, grpc.aio.Channel)


class BaseClient(Generic[ChannelT]):
    """What SandboxClient and AsyncSandboxClient share: all but the calls. (The pure
    pieces both use, building requests and reading answers, are functions in _request and
    _tool_run.)"""

    # Each twin's channel factory (_auth): grpc's blocking channel or grpc.aio's.
    _connect: ClassVar[Callable[..., Any]]

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float | None = 120.0,
        channel_options: ChannelOptions = (),
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        wait_for_ready: bool = False,
    ) -> None:
        """`timeout_s` is each call's deadline unless the call gives its own. `api_key`
        is sent as `authorization: Bearer KEY` on every call; `credentials` (e.g.
        grpc.ssl_channel_credentials, with a client certificate for mutual TLS) make the
        channel TLS. `wait_for_ready`: a call made while the server cannot be reached
        waits for it, up to the call's deadline, instead of failing UNAVAILABLE at once
        (gRPC's wait-for-ready; for a server that is being restarted)."""
        self.target = target
        self.timeout_s = timeout_s
        self._ready = True if wait_for_ready else None
        # Answers this client gave, so a resumed run's repeat of a call runs no tool twice.
        self._answers = Answers()
        self._channel: ChannelT = self._connect(
            target, channel_options, api_key=api_key, credentials=credentials
        )
        self._stub = ServiceStub(self._channel)

    def _deadline(self, options: ExecuteOptions) -> float | None:
        return options.get("timeout_s") or self.timeout_s

    def _stream_request(
        self, code: str, options: ExecuteOptions
    ) -> sandbox_pb2.ExecuteStreamRequest:
        return sandbox_pb2.ExecuteStreamRequest(request=execute_request(code, **options))

    def _run_start(
        self, code: str, tools: Tools, options: ExecuteOptions
    ) -> sandbox_pb2.RunRequest:
        """The Run stream's first message: the request and the tools' declarations."""
        return start_message(execute_request(code, **options), tools)

    def _recovery_state(self, item: Prepared, recovery: RecoveryPolicy) -> RunState:
        """run()'s state for a batch item that failed: its own code and options."""
        return self._run_state(item.code, recovery, False, item.options)

    def _run_state(
        self, code: str, recovery: RecoveryPolicy | None, can_repair: bool, options: ExecuteOptions
    ) -> RunState:
        return RunState(
            code,
            recovery=recovery or RecoveryPolicy(),
            options={**options, "timeout_s": self._deadline(options)},
            can_repair=can_repair,
        )


class SandboxClient(BaseClient[grpc.Channel]):
    """Blocking client. A failure of the code, or a refused request, comes back as an
    ExecutionResult with `ok=False` and a classified `failure`; it is never raised
    (`result.raise_for_failure()` raises it, when you would rather have an exception).

    Every execution method takes `code` and the keyword options of ExecuteOptions:
    `backend` ("auto", "monty", "container"), `policy`, `inputs`, `stdin`, `limits`,
    `session_id`, `idempotency_key`, `timeout_s`."""

    _connect = staticmethod(sync_channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def execute(self, code: str, **options: Unpack[ExecuteOptions]) -> ExecutionResult:
        """Runs `code` once and returns what happened."""
        request = execute_request(code, **options)
        try:
            response = self._stub.Execute(
                request, timeout=self._deadline(options), wait_for_ready=self._ready
            )
        except grpc.RpcError as error:
            return failed_result(error)
        return result_from_proto(response.result)

    def execute_stream(
        self, code: str, **options: Unpack[ExecuteOptions]
    ) -> Iterator[OutputChunk | ExecutionResult]:
        """Yields output chunks as the code prints, then exactly one ExecutionResult."""
        return self._stream(self._stream_request(code, options), self._deadline(options))

    def _stream(
        self, request: sandbox_pb2.ExecuteStreamRequest, deadline_s: float | None
    ) -> Iterator[OutputChunk | ExecutionResult]:
        try:
            for msg in self._stub.ExecuteStream(
                request, timeout=deadline_s, wait_for_ready=self._ready
            ):
                yield stream_event(msg)
        except grpc.RpcError as error:
            yield failed_result(error)

    def run_tools(
        self, code: str, *, tools: Tools, **options: Unpack[ExecuteOptions]
    ) -> ExecutionResult:
        """Runs `code` once, as execute() does, with `tools` ({name: callable}) it may
        call like functions: each call runs here and its return value (JSON) goes back
        to the code; an exception a tool raises is raised in the code. One attempt, over
        the Run stream, with no recovery: run(tools=...) adds retries that resume the run
        where it stopped. Tools are called one at a time, in this thread."""
        outgoing: queue.Queue[sandbox_pb2.RunRequest | None] = queue.Queue()
        start = self._run_start(code, tools, options)
        key = start.start.request.idempotency_key
        outgoing.put(start)

        def requests() -> Iterator[sandbox_pb2.RunRequest]:
            while (msg := outgoing.get()) is not None:
                yield msg

        try:
            for msg in self._stub.Run(
                requests(), timeout=self._deadline(options), wait_for_ready=self._ready
            ):
                event = event_of(msg)
                if isinstance(event, ExecutionResult):
                    return event
                if event is not None:
                    outgoing.put(call_tool_sync(invocation(event, tools, key), self._answers))
        except grpc.RpcError as error:
            return failed_result(error)
        finally:
            outgoing.put(None)
        return no_result()

    def run(
        self,
        code: str,
        *,
        repair: RepairFn | None = None,
        escalate: EscalationHandler | None = None,
        recovery: RecoveryPolicy | None = None,
        tools: Tools | None = None,
        **options: Unpack[ExecuteOptions],
    ) -> Outcome:
        """Executes `code` and recovers from failures as `recovery` says: retries what is
        not the code's fault, repairs what is (with `repair`), falls back, resizes, and
        asks `escalate` (default: raise EscalationRequired) when nothing else can help.
        `policy` is the server's execution policy, as in execute(). `timeout_s` bounds
        each attempt; `recovery.max_total_s` bounds the whole run.

        With `tools`, each attempt is a run_tools() (a durable run, in Monty or a
        container as `backend` says). A retry after a lost connection or server resumes
        the run (Monty: from its last checkpoint; a container: replayed from the start),
        so tools already answered are not called again; pass the same `idempotency_key`
        to resume a run this process did not start (e.g. after the client itself died)."""
        state = self._run_state(code, recovery, repair is not None, options)
        execute = self.execute if tools is None else functools.partial(self.run_tools, tools=tools)
        return run_sync(execute, state, repair=repair, escalate=escalate)

    def map(
        self,
        items: Iterable[Item],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        recovery: RecoveryPolicy | None = None,
        **options: Unpack[ExecuteOptions],
    ) -> Iterator[ExecutionResult]:
        """Runs every item (code, or a BatchItem mapping with its own options) over one
        Batch stream and yields their results in input order; as_completed() yields
        them as they finish. See as_completed() for the options."""
        order = InOrder()
        for index, result in self.as_completed(
            items, concurrency=concurrency, recovery=recovery, **options
        ):
            yield from order.push(index, result)

    def as_completed(
        self,
        items: Iterable[Item],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        recovery: RecoveryPolicy | None = None,
        **options: Unpack[ExecuteOptions],
    ) -> Iterator[tuple[int, ExecutionResult]]:
        """Runs every item over one Batch stream, at most `concurrency` in flight (fewer
        if the server grants fewer), and yields (index in `items`, result) as each
        finishes: exactly one per item, a refused item or a stream that broke included
        (each classified as execute() would). `options` are execute()'s, for every item
        an item does not override; `timeout_s` is the whole batch's deadline (default:
        none). With `recovery`, an item that failed goes through run()'s recovery (retry,
        fallback, resize; escalations keep the failure) before it is yielded."""
        prepared = prepare(items, options)
        credits = threading.Semaphore(0)
        stopped = threading.Event()

        def send() -> Iterator[sandbox_pb2.BatchRequest]:
            outbox = Outbox(prepared)
            while True:
                credits.acquire()
                granted = 1
                while credits.acquire(blocking=False):
                    granted += 1
                message = None if stopped.is_set() else outbox.message(granted)
                if message is None:
                    return
                if granted > len(message.items):
                    credits.release(granted - len(message.items))
                yield message

        answered: set[int] = set()
        error: grpc.RpcError | None = None
        call = self._stub.Batch(send(), timeout=options.get("timeout_s"))
        try:
            try:
                for msg in call:
                    granted = window_of(msg)
                    if granted is not None:
                        credits.release(max(1, min(granted, concurrency)))
                        continue
                    for index, result in answers_of(msg):
                        credits.release()
                        answered.add(index)
                        yield index, self._recovered(prepared[index], result, recovery)
            except grpc.RpcError as failed:
                error = failed
            for index, result in unanswered(len(prepared), answered, error):
                yield index, self._recovered(prepared[index], result, recovery)
        finally:
            stopped.set()
            credits.release(len(prepared) + 1)
            call.cancel()

    def _recovered(
        self, item: Prepared, result: ExecutionResult, recovery: RecoveryPolicy | None
    ) -> ExecutionResult:
        """`result`, or with `recovery` what run()'s recovery makes of it: the batch's
        result stands as the first attempt, later attempts are execute() calls."""
        if recovery is None or result.ok:
            return result
        first = [result]

        def attempt(code: str, **options: Any) -> ExecutionResult:
            return first.pop() if first else self.execute(code, **options)

        state = self._recovery_state(item, recovery)
        return run_sync(attempt, state, repair=None, escalate=keep_failure).result

    def create_session(
        self,
        *,
        backend: BackendName = Backend.MONTY,
        policy: str = "",
        limits: Limits | None = None,
    ) -> Session:
        """Raises RequestRefused when the server refuses (e.g. over the session quota)."""
        request = session_request(backend, policy, limits)
        try:
            response = self._stub.CreateSession(
                request, timeout=self.timeout_s, wait_for_ready=self._ready
            )
        except grpc.RpcError as error:
            raise refused(error) from None
        return session_from_proto(response)

    def close_session(self, session_id: str) -> None:
        """Raises RequestRefused when the server refuses (e.g. an unknown session)."""
        request = sandbox_pb2.CloseSessionRequest(session_id=session_id)
        try:
            self._stub.CloseSession(request, timeout=self.timeout_s, wait_for_ready=self._ready)
        except grpc.RpcError as error:
            raise refused(error) from None


class AsyncSandboxClient(BaseClient[grpc.aio.Channel]):
    """asyncio twin of SandboxClient, with the same methods awaited (execute_stream is
    iterated with `async for`)."""

    _connect = staticmethod(async_channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def execute(self, code: str, **options: Unpack[ExecuteOptions]) -> ExecutionResult:
        request = execute_request(code, **options)
        try:
            response = await self._stub.Execute(
                request, timeout=self._deadline(options), wait_for_ready=self._ready
            )
        except grpc.RpcError as error:
            return failed_result(error)
        return result_from_proto(response.result)

    def execute_stream(
        self, code: str, **options: Unpack[ExecuteOptions]
    ) -> AsyncIterator[OutputChunk | ExecutionResult]:
        """As SandboxClient.execute_stream, iterated with `async for`."""
        return self._stream(self._stream_request(code, options), self._deadline(options))

    async def _stream(
        self, request: sandbox_pb2.ExecuteStreamRequest, deadline_s: float | None
    ) -> AsyncIterator[OutputChunk | ExecutionResult]:
        try:
            async for msg in self._stub.ExecuteStream(
                request, timeout=deadline_s, wait_for_ready=self._ready
            ):
                yield stream_event(msg)
        except grpc.RpcError as error:
            yield failed_result(error)

    async def run_tools(
        self, code: str, *, tools: Tools, **options: Unpack[ExecuteOptions]
    ) -> ExecutionResult:
        """As SandboxClient.run_tools; tools may be coroutine functions (the code then
        awaits them), and calls the code gathers are answered concurrently. A blocking
        tool runs in a worker thread, so it does not stall the others."""
        call = self._stub.Run(timeout=self._deadline(options), wait_for_ready=self._ready)
        writing = asyncio.Lock()
        answering: set[asyncio.Task[None]] = set()

        start = self._run_start(code, tools, options)
        key = start.start.request.idempotency_key

        async def answer(event: sandbox_pb2.ToolCall) -> None:
            reply = await call_tool_async(invocation(event, tools, key), self._answers)
            async with writing:
                await call.write(reply)

        try:
            await call.write(start)
            while (msg := await call.read()) is not grpc.aio.EOF:
                event = event_of(msg)
                if isinstance(event, ExecutionResult):
                    return event
                if event is not None:
                    task = asyncio.create_task(answer(event))
                    answering.add(task)
                    task.add_done_callback(answering.discard)
        except grpc.RpcError as error:
            return failed_result(error)
        finally:
            for task in answering:
                task.cancel()
            call.cancel()
        return no_result()

    async def run(
        self,
        code: str,
        *,
        repair: AsyncRepairFn | None = None,
        escalate: AsyncEscalationHandler | None = None,
        recovery: RecoveryPolicy | None = None,
        tools: Tools | None = None,
        **options: Unpack[ExecuteOptions],
    ) -> Outcome:
        """As SandboxClient.run; `repair`, `escalate` and tools may be coroutine
        functions. Async tools the code gathers run concurrently."""
        state = self._run_state(code, recovery, repair is not None, options)
        execute = self.execute if tools is None else functools.partial(self.run_tools, tools=tools)
        return await run_async(execute, state, repair=repair, escalate=escalate)

    async def map(
        self,
        items: Iterable[Item],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        recovery: RecoveryPolicy | None = None,
        **options: Unpack[ExecuteOptions],
    ) -> AsyncIterator[ExecutionResult]:
        """As SandboxClient.map, iterated with `async for`."""
        order = InOrder()
        async for index, result in self.as_completed(
            items, concurrency=concurrency, recovery=recovery, **options
        ):
            for ready in order.push(index, result):
                yield ready

    async def as_completed(
        self,
        items: Iterable[Item],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        recovery: RecoveryPolicy | None = None,
        **options: Unpack[ExecuteOptions],
    ) -> AsyncIterator[tuple[int, ExecutionResult]]:
        """As SandboxClient.as_completed, iterated with `async for`."""
        prepared = prepare(items, options)
        credits = asyncio.Semaphore(0)
        call = self._stub.Batch(timeout=options.get("timeout_s"))

        async def send() -> None:
            outbox = Outbox(prepared)
            while True:
                await credits.acquire()
                granted = 1
                while not credits.locked():
                    await credits.acquire()
                    granted += 1
                message = outbox.message(granted)
                if message is None:
                    break
                for _ in range(granted - len(message.items)):
                    credits.release()
                await call.write(message)
            await call.done_writing()

        sender: asyncio.Task[None] | None = None
        answered: set[int] = set()
        error: grpc.RpcError | None = None
        try:
            try:
                while (msg := await call.read()) is not grpc.aio.EOF:
                    granted = window_of(msg)
                    if granted is not None:
                        for _ in range(max(1, min(granted, concurrency))):
                            credits.release()
                        if sender is None:
                            sender = asyncio.create_task(send())
                        continue
                    for index, result in answers_of(msg):
                        credits.release()
                        answered.add(index)
                        yield index, await self._recovered(prepared[index], result, recovery)
            except grpc.RpcError as failed:
                error = failed
            for index, result in unanswered(len(prepared), answered, error):
                yield index, await self._recovered(prepared[index], result, recovery)
        finally:
            if sender is not None:
                sender.cancel()
            call.cancel()

    async def _recovered(
        self, item: Prepared, result: ExecutionResult, recovery: RecoveryPolicy | None
    ) -> ExecutionResult:
        if recovery is None or result.ok:
            return result
        first = [result]

        async def attempt(code: str, **options: Any) -> ExecutionResult:
            return first.pop() if first else await self.execute(code, **options)

        state = self._recovery_state(item, recovery)
        outcome = await run_async(attempt, state, repair=None, escalate=keep_failure)
        return outcome.result

    async def create_session(
        self,
        *,
        backend: BackendName = Backend.MONTY,
        policy: str = "",
        limits: Limits | None = None,
    ) -> Session:
        request = session_request(backend, policy, limits)
        try:
            response = await self._stub.CreateSession(
                request, timeout=self.timeout_s, wait_for_ready=self._ready
            )
        except grpc.RpcError as error:
            raise refused(error) from None
        return session_from_proto(response)

    async def close_session(self, session_id: str) -> None:
        request = sandbox_pb2.CloseSessionRequest(session_id=session_id)
        try:
            await self._stub.CloseSession(
                request, timeout=self.timeout_s, wait_for_ready=self._ready
            )
        except grpc.RpcError as error:
            raise refused(error) from None
