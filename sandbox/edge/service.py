"""The gRPC edge: proto in, Executor, proto out. Request errors become statuses carrying
google.rpc.ErrorInfo (reason = the failure kind) and RetryInfo."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc

from sandbox.access.tenants import LOCAL_TENANT, Access, common_names
from sandbox.core.executor import ExecuteCall, Executor
from sandbox.core.output import StreamName
from sandbox.edge import decode as wire
from sandbox.edge.run_stream import serve_run
from sandbox.errors import RequestError, invalid
from sandbox_client import ExecutionResult, FailureKind
from sandbox_client.protocol.convert import STATUS_DETAILS_KEY, result_to_proto, status_details
from sandbox_client.protocol.service import METHODS
from sandbox_client.protocol.service import generic_handler as service_handler
from sandbox_client.protocol.v1 import sandbox_pb2

_STATUS_BY_KIND: dict[FailureKind, grpc.StatusCode] = {
    FailureKind.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    FailureKind.POLICY_VIOLATION: grpc.StatusCode.PERMISSION_DENIED,
    FailureKind.THROTTLED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailureKind.INFRA_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    FailureKind.CORRUPT_STATE: grpc.StatusCode.DATA_LOSS,
    FailureKind.CANCELLED: grpc.StatusCode.CANCELLED,
}

_STREAMS: dict[StreamName, sandbox_pb2.Stream] = {
    "stdout": sandbox_pb2.STDOUT,
    "stderr": sandbox_pb2.STDERR,
}


class Undecodable:
    """Stands in for a request whose bytes did not parse (bad UTF-8, garbage)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: RequestError) -> None:
    code = _STATUS_BY_KIND.get(error.kind, grpc.StatusCode.FAILED_PRECONDITION)
    if error.not_found:
        code = grpc.StatusCode.NOT_FOUND
    if error.unauthenticated:
        code = grpc.StatusCode.UNAUTHENTICATED
    metadata = {"field": error.field} if error.field else {}
    metadata.update(error.metadata)
    details = status_details(
        code, error.kind, error.message, metadata=metadata, retry_after_ms=error.retry_after_ms
    )
    await context.abort(code, error.message, trailing_metadata=((STATUS_DETAILS_KEY, details),))


def _checked(
    method: Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[Any, Req | Undecodable, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """Turns undecodable requests and RequestErrors into rich gRPC errors."""

    async def wrapper(
        self: Any, request: Req | Undecodable, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Resp:
        try:
            if isinstance(request, Undecodable):
                raise invalid(f"the request could not be decoded: {request.error}")
            return await method(self, request, context)
        except RequestError as error:
            await _abort(context, error)
            raise AssertionError("abort returned") from error

    return wrapper


class SandboxService:
    """sandbox.v1.SandboxService."""

    def __init__(self, executor: Executor, access: Access | None = None) -> None:
        self._executor = executor
        self._access = access or Access()

    # -- access: who asks (auth), under which policy, within its quotas ---------------

    def _tenant(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> str:
        if not self._access.required:
            return LOCAL_TENANT
        try:
            return self._access.authenticate(
                context.invocation_metadata(), common_names(context.auth_context())
            )
        except RequestError as error:
            self._executor.recorder.event(method, tenant="", error=error)
            raise

    def _call(
        self, msg: sandbox_pb2.ExecuteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ExecuteCall:
        tenant = self._tenant(context, "Execute")
        try:
            call = wire.execute_call(msg, tenant=tenant)
            policy = self._access.policy_for(tenant, call.policy, in_session=bool(call.session_id))
        except RequestError as error:
            self._executor.recorder.event(
                "Execute", tenant=tenant, error=error, policy_name=msg.policy
            )
            raise
        return call if policy == call.policy else dataclasses.replace(call, policy=policy)

    @contextlib.contextmanager
    def _admitted(self, call: ExecuteCall) -> Iterator[None]:
        """Holds a concurrency slot and a rate token of the caller's, or THROTTLED."""
        try:
            self._access.acquire(call.tenant)
        except RequestError as error:
            self._executor.recorder.execution(
                call, policy=None, limits=None, result=None, error=error
            )
            raise
        try:
            yield
        finally:
            self._access.release(call.tenant)

    @_checked
    async def Execute(
        self, request: sandbox_pb2.ExecuteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sandbox_pb2.ExecuteResponse:
        call = self._call(request, context)
        with self._admitted(call):
            result = await self._executor.execute(call)
        return sandbox_pb2.ExecuteResponse(result=result_to_proto(result))

    async def ExecuteStream(
        self,
        request: sandbox_pb2.ExecuteStreamRequest | Undecodable,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[sandbox_pb2.ExecuteStreamResponse]:
        try:
            if isinstance(request, Undecodable):
                raise invalid(f"the request could not be decoded: {request.error}")
            call = self._call(request.request, context)
            loop = asyncio.get_running_loop()
            chunks: asyncio.Queue[tuple[StreamName, str] | None] = asyncio.Queue()

            def forward(stream: StreamName, text: str) -> None:
                loop.call_soon_threadsafe(chunks.put_nowait, (stream, text))

            async def run() -> ExecutionResult:
                try:
                    with self._admitted(call):
                        return await self._executor.execute(call, on_output=forward)
                finally:
                    # After every chunk the backend forwarded (call_soon_threadsafe is FIFO).
                    loop.call_soon_threadsafe(chunks.put_nowait, None)

            task = asyncio.create_task(run())
            try:
                while (chunk := await chunks.get()) is not None:
                    stream, text = chunk
                    yield sandbox_pb2.ExecuteStreamResponse(
                        output=sandbox_pb2.OutputChunk(stream=_STREAMS[stream], text=text)
                    )
                result = await task
            finally:
                if not task.done():
                    task.cancel()
            yield sandbox_pb2.ExecuteStreamResponse(result=result_to_proto(result))
        except RequestError as error:
            await _abort(context, error)

    async def Run(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[sandbox_pb2.RunResponse]:
        try:
            # Authenticated and admitted like Execute: the tenant's policy and quotas apply.
            async for event in serve_run(
                self._executor, requests, lambda msg: self._call(msg, context), self._admitted
            ):
                yield event
        except RequestError as error:
            await _abort(context, error)

    @_checked
    async def CreateSession(
        self,
        request: sandbox_pb2.CreateSessionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> sandbox_pb2.CreateSessionResponse:
        tenant = self._tenant(context, "CreateSession")
        try:
            with self._access.admit(tenant):
                entry = await self._executor.create_session(
                    wire.backend_field(request.backend),
                    self._access.policy_for(tenant, request.policy),
                    wire.requested_limits(request.limits),
                    tenant=tenant,
                )
        except RequestError as error:
            self._executor.recorder.event(
                "CreateSession", tenant=tenant, error=error, policy_name=request.policy
            )
            raise
        self._executor.recorder.event(
            "CreateSession",
            tenant=tenant,
            session_id=entry.id,
            policy=entry.policy,
            backend=entry.backend.kind.value,
        )
        return sandbox_pb2.CreateSessionResponse(
            session_id=entry.id,
            backend=entry.backend.kind.name,
            policy_name=entry.policy.name,
            idle_timeout_ms=int(self._executor.sessions.idle_timeout_s * 1000),
        )

    @_checked
    async def CloseSession(
        self,
        request: sandbox_pb2.CloseSessionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> sandbox_pb2.CloseSessionResponse:
        tenant = self._tenant(context, "CloseSession")
        error: RequestError | None = None
        try:
            await self._executor.close_session(request.session_id, tenant=tenant)
        except RequestError as exc:
            error = exc
            raise
        finally:
            self._executor.recorder.event(
                "CloseSession", tenant=tenant, session_id=request.session_id, error=error
            )
        return sandbox_pb2.CloseSessionResponse()


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # DecodeError, and whatever else garbage provokes
            return Undecodable(exc)

    return deserialize


def generic_handler(service: SandboxService) -> grpc.GenericRpcHandler:
    """The service's handlers; a request that does not decode reaches the handler (as
    Undecodable) and gets INVALID_REQUEST instead of grpc's INTERNAL."""
    return service_handler(
        {name: getattr(service, name) for name in METHODS},
        decode=lambda method: _lenient(method.request.FromString),
    )
