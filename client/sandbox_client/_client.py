"""SandboxClient and AsyncSandboxClient: identical signatures, thin I/O over _request."""

from __future__ import annotations

import asyncio
import functools
import queue
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio

from ._auth import async_channel, sync_channel
from ._recovery import Outcome, RecoveryPolicy
from ._recovery_run import (
    AsyncEscalationHandler,
    AsyncRepairFn,
    EscalationHandler,
    RepairFn,
    new_state,
    run_async,
    run_sync,
)
from ._request import (
    DEFAULT_TARGET,
    BackendName,
    OutputChunk,
    SandboxError,
    Session,
    execute_request,
    failed_result,
    failure_of,
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

ChannelOptions = Sequence[tuple[str, Any]]


class SandboxClient:
    """Blocking client. A failure of the code, or a refused request, comes back as an
    ExecutionResult with `ok=False` and a classified `failure`; it is never raised."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float | None = 120.0,
        channel_options: ChannelOptions = (),
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`api_key` is sent as `authorization: Bearer KEY` on every call; `credentials`
        (e.g. grpc.ssl_channel_credentials, with a client certificate for mutual TLS)
        make the channel TLS."""
        self.target = target
        self.timeout_s = timeout_s
        self._channel = sync_channel(
            target, channel_options, api_key=api_key, credentials=credentials
        )
        self._stub = ServiceStub(self._channel)

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

    def execute(
        self,
        code: str,
        *,
        backend: BackendName = Backend.AUTO,
        policy: str = "",
        inputs: Mapping[str, Any] | None = None,
        stdin: str = "",
        limits: Limits | None = None,
        session_id: str = "",
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
    ) -> ExecutionResult:
        request = execute_request(
            code,
            backend=backend,
            policy=policy,
            inputs=inputs,
            stdin=stdin,
            limits=limits,
            session_id=session_id,
            idempotency_key=idempotency_key,
        )
        try:
            response = self._stub.Execute(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as error:
            return failed_result(error)
        return result_from_proto(response.result)

    def run(
        self,
        code: str,
        *,
        repair: RepairFn | None = None,
        escalate: EscalationHandler | None = None,
        recovery: RecoveryPolicy | None = None,
        backend: BackendName = Backend.AUTO,
        policy: str = "",
        inputs: Mapping[str, Any] | None = None,
        stdin: str = "",
        limits: Limits | None = None,
        session_id: str = "",
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        tools: Tools | None = None,
    ) -> Outcome:
        """Executes `code` and recovers from failures as `recovery` says: retries what is
        not the code's fault, repairs what is (with `repair`), falls back, resizes, and
        asks `escalate` (default: raise EscalationRequired) when nothing else can help.
        `policy` is the server's execution policy, as in execute(). `timeout_s` bounds
        each attempt; `recovery.max_total_s` bounds the whole run.

        With `tools` ({name: callable}), the code may call them like functions (a durable
        run, in Monty or a container as `backend` says): each call runs here and its
        answer goes back to the code. A retry after a lost connection or server resumes
        the run (Monty: from its last checkpoint; a container: replayed from the start),
        so tools already answered are not called again; pass the same `idempotency_key`
        to resume a run this process did not start (e.g. after the client itself died)."""
        state = new_state(
            code,
            recovery=recovery,
            backend=backend,
            policy=policy,
            limits=limits,
            session_id=session_id,
            idempotency_key=idempotency_key,
            timeout_s=timeout_s or self.timeout_s,
            can_repair=repair is not None,
        )
        execute = self.execute if tools is None else functools.partial(self._run_tools, tools)
        return run_sync(
            execute, state, repair=repair, escalate=escalate, inputs=inputs, stdin=stdin
        )

    def _run_tools(
        self, tools: Tools, code: str, *, timeout_s: float | None = None, **fields: Any
    ) -> ExecutionResult:
        """One attempt of a tool run: execute()'s signature, over the Run stream."""
        outgoing: queue.Queue[sandbox_pb2.RunRequest | None] = queue.Queue()
        outgoing.put(start_message(execute_request(code, **fields), tools))

        def requests() -> Iterator[sandbox_pb2.RunRequest]:
            while (msg := outgoing.get()) is not None:
                yield msg

        try:
            for msg in self._stub.Run(requests(), timeout=timeout_s or self.timeout_s):
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

    def execute_stream(
        self,
        code: str,
        *,
        backend: BackendName = Backend.AUTO,
        policy: str = "",
        inputs: Mapping[str, Any] | None = None,
        stdin: str = "",
        limits: Limits | None = None,
        session_id: str = "",
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[OutputChunk | ExecutionResult]:
        """Yields output chunks as the code prints, then exactly one ExecutionResult."""
        request = execute_request(
            code,
            backend=backend,
            policy=policy,
            inputs=inputs,
            stdin=stdin,
            limits=limits,
            session_id=session_id,
            idempotency_key=idempotency_key,
        )
        try:
            for msg in self._stub.ExecuteStream(
                sandbox_pb2.ExecuteStreamRequest(request=request),
                timeout=timeout_s or self.timeout_s,
            ):
                yield stream_event(msg)
        except grpc.RpcError as error:
            yield failed_result(error)

    def create_session(
        self,
        *,
        backend: BackendName = Backend.MONTY,
        policy: str = "",
        limits: Limits | None = None,
    ) -> Session:
        """Raises SandboxError when the server refuses."""
        try:
            response = self._stub.CreateSession(
                session_request(backend, policy, limits), timeout=self.timeout_s
            )
        except grpc.RpcError as error:
            raise SandboxError(failure_of(error)) from None
        return session_from_proto(response)

    def close_session(self, session_id: str) -> None:
        """Raises SandboxError when the server refuses (e.g. an unknown session)."""
        try:
            self._stub.CloseSession(
                sandbox_pb2.CloseSessionRequest(session_id=session_id), timeout=self.timeout_s
            )
        except grpc.RpcError as error:
            raise SandboxError(failure_of(error)) from None


class AsyncSandboxClient:
    """asyncio twin of SandboxClient, with the same methods awaited."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float | None = 120.0,
        channel_options: ChannelOptions = (),
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`api_key` is sent as `authorization: Bearer KEY` on every call; `credentials`
        (e.g. grpc.ssl_channel_credentials, with a client certificate for mutual TLS)
        make the channel TLS."""
        self.target = target
        self.timeout_s = timeout_s
        self._channel = async_channel(
            target, channel_options, api_key=api_key, credentials=credentials
        )
        self._stub = ServiceStub(self._channel)

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

    async def execute(
        self,
        code: str,
        *,
        backend: BackendName = Backend.AUTO,
        policy: str = "",
        inputs: Mapping[str, Any] | None = None,
        stdin: str = "",
        limits: Limits | None = None,
        session_id: str = "",
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
    ) -> ExecutionResult:
        request = execute_request(
            code,
            backend=backend,
            policy=policy,
            inputs=inputs,
            stdin=stdin,
            limits=limits,
            session_id=session_id,
            idempotency_key=idempotency_key,
        )
        try:
            response = await self._stub.Execute(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as error:
            return failed_result(error)
        return result_from_proto(response.result)

    async def run(
        self,
        code: str,
        *,
        repair: AsyncRepairFn | None = None,
        escalate: AsyncEscalationHandler | None = None,
        recovery: RecoveryPolicy | None = None,
        backend: BackendName = Backend.AUTO,
        policy: str = "",
        inputs: Mapping[str, Any] | None = None,
        stdin: str = "",
        limits: Limits | None = None,
        session_id: str = "",
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        tools: Tools | None = None,
    ) -> Outcome:
        """As SandboxClient.run; `repair`, `escalate` and tools may be coroutine
        functions. Async tools the code gathers run concurrently."""
        state = new_state(
            code,
            recovery=recovery,
            backend=backend,
            policy=policy,
            limits=limits,
            session_id=session_id,
            idempotency_key=idempotency_key,
            timeout_s=timeout_s or self.timeout_s,
            can_repair=repair is not None,
        )
        execute = self.execute if tools is None else functools.partial(self._run_tools, tools)
        return await run_async(
            execute, state, repair=repair, escalate=escalate, inputs=inputs, stdin=stdin
        )

    async def _run_tools(
        self, tools: Tools, code: str, *, timeout_s: float | None = None, **fields: Any
    ) -> ExecutionResult:
        call = self._stub.Run(timeout=timeout_s or self.timeout_s)
        writing = asyncio.Lock()
        answering: set[asyncio.Task[None]] = set()

        async def answer(event: sandbox_pb2.ToolCall) -> None:
            reply = await call_tool_async(invocation(event, tools))
            async with writing:
                await call.write(reply)

        try:
            await call.write(start_message(execute_request(code, **fields), tools))
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

    async def execute_stream(
        self,
        code: str,
        *,
        backend: BackendName = Backend.AUTO,
        policy: str = "",
        inputs: Mapping[str, Any] | None = None,
        stdin: str = "",
        limits: Limits | None = None,
        session_id: str = "",
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[OutputChunk | ExecutionResult]:
        request = execute_request(
            code,
            backend=backend,
            policy=policy,
            inputs=inputs,
            stdin=stdin,
            limits=limits,
            session_id=session_id,
            idempotency_key=idempotency_key,
        )
        try:
            async for msg in self._stub.ExecuteStream(
                sandbox_pb2.ExecuteStreamRequest(request=request),
                timeout=timeout_s or self.timeout_s,
            ):
                yield stream_event(msg)
        except grpc.RpcError as error:
            yield failed_result(error)

    async def create_session(
        self,
        *,
        backend: BackendName = Backend.MONTY,
        policy: str = "",
        limits: Limits | None = None,
    ) -> Session:
        try:
            response = await self._stub.CreateSession(
                session_request(backend, policy, limits), timeout=self.timeout_s
            )
        except grpc.RpcError as error:
            raise SandboxError(failure_of(error)) from None
        return session_from_proto(response)

    async def close_session(self, session_id: str) -> None:
        try:
            await self._stub.CloseSession(
                sandbox_pb2.CloseSessionRequest(session_id=session_id), timeout=self.timeout_s
            )
        except grpc.RpcError as error:
            raise SandboxError(failure_of(error)) from None
