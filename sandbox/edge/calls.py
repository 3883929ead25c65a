"""What every RPC does around the core, in one place: decode, authenticate, admit,
record, and turn a RequestError into a gRPC status.

`Edge.call()` is an async context manager each handler wraps its work in. In order: the
caller is authenticated from the call's metadata (before a stream's first message is
read); the request is decoded (bytes that did not parse are INVALID_REQUEST); a quota
slot is held for the whole call when it runs code or opens a session; and exactly one
audit record is written when the call
ends (finished, refused or cancelled), its future awaited so that `audit_fsync =
"always"` holds for every method. A RequestError ends the call with its status,
google.rpc.ErrorInfo and RetryInfo."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from sandbox.access.tenants import LOCAL_TENANT, Access, common_names
from sandbox.core.executor import Trace
from sandbox.core.recorder import Recorder
from sandbox.core.request import Method, Request
from sandbox.errors import Cancelled, InvalidRequest, RequestError
from sandbox_client.protocol.convert import STATUS_DETAILS_KEY
from sandbox_client.protocol.models import ExecutionResult

Context = grpc.aio.ServicerContext[Any, Any]
# Turns what arrived into the core's Request, for the authenticated tenant.
Decoder = Callable[[str], Awaitable[Request]]


class Undecodable:
    """Stands in for a request whose bytes did not parse (bad UTF-8, garbage)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A request deserializer that hands garbage to the handler (as Undecodable), so it
    gets INVALID_REQUEST instead of grpc's INTERNAL."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # DecodeError, and whatever else garbage provokes
            return Undecodable(exc)

    return deserialize


def checked(message: Any) -> Any:
    """`message`, or INVALID_REQUEST if its bytes did not parse."""
    if isinstance(message, Undecodable):
        raise InvalidRequest(f"the request could not be decoded: {message.error}")
    return message


@dataclass(kw_only=True)
class Call:
    """One RPC as the edge sees it; the handler fills in what it learns."""

    method: Method
    tenant: str
    request: Request | None = None
    trace: Trace = field(default_factory=Trace)
    result: ExecutionResult | None = None
    session_id: str = ""
    policy_name: str = ""  # as asked, for a refusal before there is a request


class Edge:
    def __init__(self, access: Access, recorder: Recorder) -> None:
        self.access = access
        self.recorder = recorder

    @contextlib.asynccontextmanager
    async def call(
        self,
        method: Method,
        context: Context,
        decode: Decoder | None = None,
        *,
        admit: bool = True,
        policy_name: str = "",
    ) -> AsyncIterator[Call]:
        """See the module docstring. `admit`: hold a quota slot; `policy_name`: the
        policy as asked, for the record of a request refused before it decoded."""
        try:
            tenant = self._authenticate(context)
        except RequestError as error:
            await self._record(Call(method=method, tenant=""), error)
            await _abort(context, error)
            raise AssertionError("abort returned") from error
        call = Call(method=method, tenant=tenant, policy_name=policy_name)
        try:
            if decode is not None:
                call.request = await decode(tenant)
            async with self._admitted(tenant, admit):
                yield call
        except RequestError as error:
            await self._record(call, error)
            await _abort(context, error)
        except asyncio.CancelledError:
            self._record_now(call, Cancelled("the caller cancelled"))
            raise
        else:
            await self._record(call, None)

    async def record(self, call: Call, error: RequestError | None = None) -> None:
        """Records one part of a call that has several (a batch's item) as a call of its
        own: its audit record awaited as `_record` does, its metrics counted."""
        await self._record(call, error)

    def _authenticate(self, context: Context) -> str:
        if not self.access.required:
            return LOCAL_TENANT
        return self.access.authenticate(
            context.invocation_metadata(), common_names(context.auth_context())
        )

    @contextlib.asynccontextmanager
    async def _admitted(self, tenant: str, admit: bool) -> AsyncIterator[None]:
        if not admit:
            yield
            return
        self.access.acquire(tenant)  # THROTTLED, with retry_after_ms
        try:
            yield
        finally:
            self.access.release(tenant)

    def _record_now(self, call: Call, error: RequestError | None) -> Any:
        return self.recorder.record(
            call.method,
            tenant=call.tenant,
            request=call.request,
            plan=call.trace.plan,
            result=call.result,
            error=error,
            session_id=call.session_id,
            policy_name=call.policy_name,
        )

    async def _record(self, call: Call, error: RequestError | None) -> None:
        written = self._record_now(call, error)
        if written is not None:
            await asyncio.wrap_future(written)


async def _abort(context: Context, error: RequestError) -> None:
    details = error.status_details()
    await context.abort(
        error.status, error.message, trailing_metadata=((STATUS_DETAILS_KEY, details),)
    )
