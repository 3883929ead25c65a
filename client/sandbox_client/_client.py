"""SandboxClient and AsyncSandboxClient. As httpx's BaseClient, Client and AsyncClient:
one base holds everything but I/O (settings, the channel's set-up, building requests,
deadlines, run()'s state), and the twins only make the calls, with identical signatures.
The options every execution method takes are one TypedDict (ExecuteOptions), so the
twins' signatures cannot drift."""

from __future__ import annotations

import asyncio
import functools
import queue
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar, Unpack

import grpc
import grpc.aio

from ._auth import async_channel, sync_channel
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
    Tools,
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
        outgoing.put(self._run_start(code, tools, options))

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
                    outgoing.put(call_tool_sync(invocation(event, tools)))
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

        async def answer(event: sandbox_pb2.ToolCall) -> None:
            reply = await call_tool_async(invocation(event, tools))
            async with writing:
                await call.write(reply)

        try:
            await call.write(self._run_start(code, tools, options))
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
