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

from sandbox_client.protocol.convert import status_details
from sandbox_client.protocol.models import FailureKind


class SandboxServerError(Exception):
    """Root of the server's exceptions."""


class ConfigError(SandboxServerError):
    """The configuration cannot be used; the message says which file and field."""


class RequestError(SandboxServerError):
    """The request cannot be served as asked. Nothing ran. A subclass names its kind and
    status in its class statement: `class PolicyDenied(RequestError, kind=..., status=...)`."""

    kind: ClassVar[FailureKind] = FailureKind.INVALID_REQUEST
    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.FAILED_PRECONDITION

    def __init_subclass__(
        cls, *, kind: FailureKind | None = None, status: grpc.StatusCode | None = None
    ) -> None:
        super().__init_subclass__()
        if kind is not None:
            cls.kind = kind
        if status is not None:
            cls.status = status

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

    def status_details(self) -> bytes:
        """The `grpc-status-details-bin` trailer the edge sends with this error's status."""
        return status_details(
            self.status,
            self.kind,
            self.message,
            metadata=self.error_info,
            retry_after_ms=self.retry_after_ms,
        )


_Status = grpc.StatusCode
_Kind = FailureKind


class InvalidRequest(RequestError, kind=_Kind.INVALID_REQUEST, status=_Status.INVALID_ARGUMENT):
    """Malformed: a field that does not decode, parse or fit."""


class NotFound(InvalidRequest, status=_Status.NOT_FOUND):
    """An unknown policy or session (another tenant's session is unknown too)."""


class NotEnabled(InvalidRequest, status=_Status.FAILED_PRECONDITION):
    """Something this server is not configured to offer (a backend): retrying changes
    nothing; the message says how an operator enables it."""


class Unauthenticated(InvalidRequest, status=_Status.UNAUTHENTICATED):
    """No credentials, or credentials that name no tenant."""


class PolicyDenied(RequestError, kind=_Kind.POLICY_VIOLATION, status=_Status.PERMISSION_DENIED):
    """More than the policy allows: a backend, a limit, a policy the tenant may not use."""


class Throttled(RequestError, kind=_Kind.THROTTLED, status=_Status.RESOURCE_EXHAUSTED):
    """Over a quota; `retry_after_ms` says when to try again."""


class Unavailable(RequestError, kind=_Kind.INFRA_UNAVAILABLE, status=_Status.UNAVAILABLE):
    """A backend or the journal cannot serve now."""


class CorruptState(RequestError, kind=_Kind.CORRUPT_STATE, status=_Status.DATA_LOSS):
    """A session or checkpoint was lost or failed its integrity check."""


class Cancelled(RequestError, kind=_Kind.CANCELLED, status=_Status.CANCELLED):
    """The caller went away or its deadline passed."""


_BY_KIND: dict[FailureKind, type[RequestError]] = {
    cls.kind: cls
    for cls in (InvalidRequest, PolicyDenied, Throttled, Unavailable, CorruptState, Cancelled)
}
