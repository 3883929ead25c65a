"""Request-level problems: raised by the layers before a backend runs, turned into a gRPC
status with google.rpc.ErrorInfo (reason = the failure kind) at the edge."""

from __future__ import annotations

from sandbox_client import FailureKind


class RequestError(Exception):
    """The request cannot be served as asked. Nothing ran."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        field: str = "",
        retry_after_ms: int = 0,
        not_found: bool = False,
        unauthenticated: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.field = field
        self.retry_after_ms = retry_after_ms
        self.not_found = not_found
        self.unauthenticated = unauthenticated
        # Extra google.rpc.ErrorInfo metadata, e.g. {"limit_value": "268435456"}.
        self.metadata = dict(metadata or {})


def invalid(message: str, *, field: str = "", not_found: bool = False) -> RequestError:
    return RequestError(FailureKind.INVALID_REQUEST, message, field=field, not_found=not_found)
