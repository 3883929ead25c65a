"""sandbox.v1.SandboxService: each handler is proto in, the core, proto out, inside the
edge's one wrapper (calls.py) that authenticates, admits and records it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from sandbox.config import BatchSettings
from sandbox.core.executor import Executor
from sandbox.core.output import StreamName
from sandbox.core.request import Method, Request
from sandbox.edge import decode
from sandbox.edge.batch_stream import serve_batch
from sandbox.edge.calls import Context, Decoder, Edge, checked, lenient
from sandbox.edge.run_stream import serve_run
from sandbox_client.protocol.convert import output_chunk_to_proto, result_to_proto
from sandbox_client.protocol.models import ExecutionResult
from sandbox_client.protocol.service import METHODS
from sandbox_client.protocol.service import generic_handler as service_handler
from sandbox_client.protocol.v1 import sandbox_pb2


class SandboxService:
    def __init__(self, executor: Executor, edge: Edge, batch: BatchSettings | None = None) -> None:
        self._executor = executor
        self._edge = edge
        self._batch = batch or BatchSettings()

    async def Execute(self, message: Any, context: Context) -> sandbox_pb2.ExecuteResponse:
        async with self._edge.call(
            "Execute", context, _execute_request(message, "Execute"), policy_name=_policy(message)
        ) as call:
            assert call.request is not None
            call.result = await self._executor.execute(call.request, call.trace)
        return sandbox_pb2.ExecuteResponse(result=result_to_proto(call.result))

    async def ExecuteStream(
        self, message: Any, context: Context
    ) -> AsyncIterator[sandbox_pb2.ExecuteStreamResponse]:
        inner = message.request if isinstance(message, sandbox_pb2.ExecuteStreamRequest) else None
        async with self._edge.call(
            "ExecuteStream",
            context,
            _execute_request(inner if inner is not None else message, "ExecuteStream"),
            policy_name=_policy(inner),
        ) as call:
            assert call.request is not None
            request, trace = call.request, call.trace
            loop = asyncio.get_running_loop()
            chunks: asyncio.Queue[tuple[StreamName, str] | None] = asyncio.Queue()

            def forward(stream: StreamName, text: str) -> None:
                loop.call_soon_threadsafe(chunks.put_nowait, (stream, text))

            async def run() -> ExecutionResult:
                try:
                    return await self._executor.execute(request, trace, on_output=forward)
                finally:
                    # After every chunk the backend forwarded (call_soon_threadsafe is FIFO).
                    loop.call_soon_threadsafe(chunks.put_nowait, None)

            task = asyncio.create_task(run())
            try:
                while (chunk := await chunks.get()) is not None:
                    stream, text = chunk
                    yield sandbox_pb2.ExecuteStreamResponse(
                        output=output_chunk_to_proto(stream, text)
                    )
                call.result = await task
            finally:
                if not task.done():
                    task.cancel()
        # After the record is written (audit_fsync = "always"), as for a unary reply.
        assert call.result is not None
        yield sandbox_pb2.ExecuteStreamResponse(result=result_to_proto(call.result))

    async def Run(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[sandbox_pb2.RunResponse]:
        async def first(tenant: str) -> Request:
            # Read only once the caller is authenticated (the edge does that first).
            return decode.run_start_of(checked(await anext(requests, None)), tenant=tenant)

        async with self._edge.call("Run", context, first) as call:
            async for event in serve_run(self._executor, call, requests):
                yield event
        assert call.result is not None
        yield sandbox_pb2.RunResponse(result=result_to_proto(call.result))

    async def Batch(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[sandbox_pb2.BatchResponse]:
        async with self._edge.call("Batch", context) as call:
            async for event in serve_batch(self._executor, self._edge, call, requests, self._batch):
                yield event

    async def CreateSession(
        self, message: Any, context: Context
    ) -> sandbox_pb2.CreateSessionResponse:
        async def request(tenant: str) -> Request:
            return decode.session_request_of(checked(message), tenant=tenant)

        async with self._edge.call(
            "CreateSession", context, request, policy_name=_policy(message)
        ) as call:
            assert call.request is not None
            entry = await self._executor.create_session(call.request, call.trace)
            call.session_id = entry.id
        return sandbox_pb2.CreateSessionResponse(
            session_id=entry.id,
            backend=entry.backend.kind.name,
            policy_name=entry.policy.name,
            idle_timeout_ms=int(self._executor.sessions.idle_timeout_s * 1000),
        )

    async def CloseSession(
        self, message: Any, context: Context
    ) -> sandbox_pb2.CloseSessionResponse:
        async with self._edge.call("CloseSession", context, admit=False) as call:
            call.session_id = checked(message).session_id
            await self._executor.close_session(call.session_id, tenant=call.tenant)
        return sandbox_pb2.CloseSessionResponse()


def _execute_request(message: Any, method: Method) -> Decoder:
    async def request(tenant: str) -> Request:
        return decode.request_of(checked(message), tenant=tenant, method=method)

    return request


def _policy(message: Any) -> str:
    return str(getattr(message, "policy", "") or "")


def generic_handler(service: SandboxService) -> grpc.GenericRpcHandler:
    """The service's handlers, built from the proto's method table; a request that does
    not decode reaches its handler (as Undecodable) and gets INVALID_REQUEST."""
    return service_handler(
        {name: getattr(service, name) for name in METHODS},
        decode=lambda method: lenient(method.request.FromString),
    )
