"""The server's exceptions. A user-code outcome is never one of these: it is a result.

    SandboxServerError            root of everything the server raises on purpose
    ├── ConfigError               settings or a file they name cannot be used (config.py)
    └── RequestError              a request cannot be served as asked; nothing ran
        ├── InvalidRequest        INVALID_ARGUMENT    INVALID_REQUEST
        │   ├── NotFound          NOT_FOUND           INVALID_REQUEST: unknown policy or session
        │   └── Unauthenticated   UNAUTHENTICATED     INVALID_REQUEST: no or unknown credentials
        ├── PolicyDenied          PERMISSION_DENIED   POLICY_VIOLATION: more than the policy allows
        ├── Throttled             RESOURCE_EXHAUSTED  THROTTLED: over a quota (retry_after_ms)
        ├── Unavailable           UNAVAILABLE         INFRA_UNAVAILABLE: a backend cannot serve now
        ├── CorruptState          DATA_LOSS           CORRUPT_STATE
        └── Cancelled             CANCELLED           CANCELLED: the caller went away

Each RequestError subclass carries its failure kind and gRPC status as class attributes;
the edge turns it into that status with google.rpc.ErrorInfo (reason = the kind,
metadata.field = the offending field) and RetryInfo, and the audit log records the kind.
`RequestError.of(kind, ...)` picks the subclass for a kind known only at run time."""

from __future__ import annotations

from typing import ClassVar

import grpc

from sandbox_client.protocol import FailureKind


class SandboxServerError(Exception):
    """Root of the server's exceptions."""


class ConfigError(SandboxServerError):
    """The configuration cannot be used; the message says which file and field."""


class RequestError(SandboxServerError):
    """The request cannot be served as asked. Nothing ran."""

    kind: ClassVar[FailureKind] = FailureKind.INVALID_REQUEST
    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        retry_after_ms: int = 0,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_ms = retry_after_ms
        # Extra google.rpc.ErrorInfo metadata, e.g. {"limit_value": "268435456"}.
        self.metadata = dict(metadata or {})

    @staticmethod
    def of(
        kind: FailureKind,
        message: str,
        *,
        field: str = "",
        retry_after_ms: int = 0,
        metadata: dict[str, str] | None = None,
    ) -> RequestError:
        """The RequestError subclass for `kind` (INVALID_REQUEST for kinds that are never
        request errors)."""
        cls = _BY_KIND.get(kind, InvalidRequest)
        return cls(message, field=field, retry_after_ms=retry_after_ms, metadata=metadata)

    @property
    def error_info(self) -> dict[str, str]:
        """google.rpc.ErrorInfo metadata: the field, then anything more specific."""
        info = {"field": self.field} if self.field else {}
        info.update(self.metadata)
        return info


class InvalidRequest(RequestError):
    kind = FailureKind.INVALID_REQUEST
    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(InvalidRequest):
    status = grpc.StatusCode.NOT_FOUND


class Unauthenticated(InvalidRequest):
    status = grpc.StatusCode.UNAUTHENTICATED


class PolicyDenied(RequestError):
    kind = FailureKind.POLICY_VIOLATION
    status = grpc.StatusCode.PERMISSION_DENIED


class Throttled(RequestError):
    kind = FailureKind.THROTTLED
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(RequestError):
    kind = FailureKind.INFRA_UNAVAILABLE
    status = grpc.StatusCode.UNAVAILABLE


class CorruptState(RequestError):
    kind = FailureKind.CORRUPT_STATE
    status = grpc.StatusCode.DATA_LOSS


class Cancelled(RequestError):
    kind = FailureKind.CANCELLED
    status = grpc.StatusCode.CANCELLED


_BY_KIND: dict[FailureKind, type[RequestError]] = {
    cls.kind: cls
    for cls in (InvalidRequest, PolicyDenied, Throttled, Unavailable, CorruptState, Cancelled)
}
