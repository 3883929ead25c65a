"""The one wire converter: result and failure models to proto and back, and gRPC errors
to the same `Failure` model. Both the server and the client use it."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from .models import LIMIT_FIELDS, Backend, ExecutionResult, Failure, FailureKind, Limits
from .v1 import sandbox_pb2

ERROR_DOMAIN = "sandbox.v1"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_BACKEND_TO_PROTO = {
    Backend.AUTO: sandbox_pb2.AUTO,
    Backend.MONTY: sandbox_pb2.MONTY,
    Backend.CONTAINER: sandbox_pb2.CONTAINER,
}
_BACKEND_FROM_PROTO: dict[int, Backend] = {int(v): k for k, v in _BACKEND_TO_PROTO.items()}


def backend_to_proto(backend: Backend | None) -> sandbox_pb2.Backend:
    return sandbox_pb2.BACKEND_UNSPECIFIED if backend is None else _BACKEND_TO_PROTO[backend]


def backend_from_proto(value: int) -> Backend | None:
    """None for BACKEND_UNSPECIFIED; raises ValueError for a number no Backend has."""
    if value == sandbox_pb2.BACKEND_UNSPECIFIED:
        return None
    try:
        return _BACKEND_FROM_PROTO[value]
    except KeyError:
        raise ValueError(f"unknown backend {value}") from None


def output_chunk_to_proto(stream: str, text: str) -> sandbox_pb2.OutputChunk:
    """A piece of output as it was produced; `stream` is "stdout" or "stderr"."""
    return sandbox_pb2.OutputChunk(
        stream=sandbox_pb2.STDERR if stream == "stderr" else sandbox_pb2.STDOUT, text=text
    )


def limits_to_proto(limits: Limits | None) -> sandbox_pb2.Limits | None:
    return None if limits is None else sandbox_pb2.Limits(**limits.model_dump(exclude_none=True))


def limits_from_proto(msg: sandbox_pb2.Limits) -> Limits:
    """0 (unset on the wire) means "the policy's value"; raises pydantic's
    ValidationError for a negative value."""
    if msg.ByteSize() == 0:  # asks for nothing (most requests)
        return NO_LIMITS_ASKED
    return Limits(**{name: getattr(msg, name) or None for name in LIMIT_FIELDS})


NO_LIMITS_ASKED = Limits()


def failure_to_proto(failure: Failure) -> sandbox_pb2.Failure:
    return sandbox_pb2.Failure(**failure.model_dump())


def failure_from_proto(msg: sandbox_pb2.Failure) -> Failure:
    return Failure.model_validate(
        {
            **_fields(msg),
            "kind": sandbox_pb2.FailureKind.Name(msg.kind),
            "suggested_action": sandbox_pb2.SuggestedAction.Name(msg.suggested_action),
            "frames": [_fields(frame) for frame in msg.frames],
            "details": dict(msg.details),
        }
    )


def result_to_proto(result: ExecutionResult) -> sandbox_pb2.ExecutionResult:
    # The models and the messages have the same fields; only the backends are spelled
    # differently (an unset optional field, None in a model, is left unset).
    return sandbox_pb2.ExecutionResult(
        **result.model_dump(exclude={"backend", "fallback_from"}),
        backend=backend_to_proto(result.backend),
        fallback_from=backend_to_proto(result.fallback_from),
    )


def result_from_proto(msg: sandbox_pb2.ExecutionResult) -> ExecutionResult:
    return ExecutionResult.model_validate(
        {
            **_fields(msg),
            "backend": _BACKEND_FROM_PROTO.get(msg.backend),
            "fallback_from": _BACKEND_FROM_PROTO.get(msg.fallback_from),
            "failure": failure_from_proto(msg.failure) if msg.HasField("failure") else None,
            "usage": _fields(msg.usage),
        }
    )


def _fields(msg: Message) -> dict[str, Any]:
    """`msg`'s fields by name, for the model of the same name to validate: an optional
    field that is not set is None. Enums, maps and nested messages are the caller's to
    convert."""
    return {
        name: getattr(msg, name) if not optional or msg.HasField(name) else None
        for name, optional in _layout(msg.DESCRIPTOR)
    }


@functools.cache
def _layout(descriptor: Descriptor) -> tuple[tuple[str, bool], ...]:
    """(name, whether it has presence) for each field of a message type."""
    return tuple((field.name, field.has_presence) for field in descriptor.fields)


# A request error without our ErrorInfo (a proxy, the transport, grpc itself) is mapped
# from its status code alone. RESOURCE_EXHAUSTED is left out on purpose: without our
# ErrorInfo it is grpc refusing an oversized message, which no retry fixes.
_KIND_BY_STATUS: dict[grpc.StatusCode, FailureKind] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: FailureKind.CANCELLED,
    grpc.StatusCode.CANCELLED: FailureKind.CANCELLED,
    grpc.StatusCode.UNAVAILABLE: FailureKind.INFRA_UNAVAILABLE,
    grpc.StatusCode.PERMISSION_DENIED: FailureKind.POLICY_VIOLATION,
    grpc.StatusCode.DATA_LOSS: FailureKind.CORRUPT_STATE,
    grpc.StatusCode.INTERNAL: FailureKind.INFRA_UNAVAILABLE,
    grpc.StatusCode.UNKNOWN: FailureKind.INFRA_UNAVAILABLE,
}


def status_details(
    code: grpc.StatusCode,
    kind: FailureKind,
    message: str,
    *,
    metadata: Mapping[str, str] | None = None,
    retry_after_ms: int = 0,
) -> bytes:
    """The `grpc-status-details-bin` trailer of a request error: google.rpc.Status with
    ErrorInfo (reason = the kind) and, when waiting helps, RetryInfo."""
    info = error_details_pb2.ErrorInfo(
        reason=kind.value, domain=ERROR_DOMAIN, metadata=dict(metadata or {})
    )
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(info)
    if retry_after_ms:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(retry_after_ms)
        status.details.add().Pack(retry)
    return bytes(status.SerializeToString())


def failure_from_status(
    code: grpc.StatusCode, details: str | None, trailing_metadata: Any
) -> Failure:
    """Maps a gRPC error to a Failure: by its ErrorInfo reason when the server attached
    one, else by status code (anything unlisted is INVALID_REQUEST)."""
    reason = ""
    retry_after_ms = 0
    metadata: dict[str, str] = {}
    for key, value in trailing_metadata or ():
        if key != STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for packed in status.details:
            if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                packed.Unpack(info)
                if info.domain == ERROR_DOMAIN:
                    reason = info.reason
                    metadata = dict(info.metadata)
            elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                packed.Unpack(retry)
                retry_after_ms = retry.retry_delay.ToMilliseconds()
    try:
        kind = FailureKind(reason)
    except ValueError:
        kind = _KIND_BY_STATUS.get(code, FailureKind.INVALID_REQUEST)
    return Failure.of(kind, details or code.name, retry_after_ms=retry_after_ms, details=metadata)
