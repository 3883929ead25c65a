"""The client's exceptions. A failure of the code is a result, never one of these: they
are for what the caller chose to raise or what left no result to return.

The tree, each with the `Failure` that says why (`.failure`):

    SandboxError
     ├─ RequestRefused       the server refused a request that has no result
     │                       (create_session, close_session); `.failure.grpc_code`
     │                       names the status
     ├─ ExecutionFailed      raised by ExecutionResult.raise_for_failure(); `.result`
     │                       is the whole result
     └─ EscalationRequired   raised by run()'s default escalation handler: nothing
                             more can be done without a person; `.escalation` holds
                             the reason and every attempt

`except SandboxError` catches all three. Only the model types are imported here, and only
for type checking: protocol.models imports this module to raise ExecutionFailed."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .protocol.models import ExecutionResult, Failure
    from .recovery._models import Escalation


class SandboxError(Exception):
    """The root: every sandbox_client exception carries the `failure` that caused it."""

    def __init__(self, failure: Failure, message: str | None = None) -> None:
        super().__init__(message or f"{failure.kind.value}: {failure.message}")
        self.failure = failure


class RequestRefused(SandboxError):
    """A request the server refused outright, with no result to return it in (e.g.
    CreateSession over the tenant's session quota, CloseSession of an unknown session).
    `failure` is a RequestFailure: its `grpc_code` names the status."""


class ExecutionFailed(SandboxError):
    """Raised by `ExecutionResult.raise_for_failure()` for a result that is not ok.
    `result` is that result (stdout, usage and all); `failure` is its failure."""

    def __init__(self, result: ExecutionResult) -> None:
        failure = result.failure or _unexplained(
            "INFRA_UNAVAILABLE", "the result is not ok and names no failure"
        )
        super().__init__(failure)
        self.result = result


class EscalationRequired(SandboxError):
    """Raised by run()'s default escalation handler: nothing more can be done without a
    person. `escalation` carries the whole history; `failure` is its last failure, or,
    where the run's budget ran out before any attempt failed, a CANCELLED one saying so."""

    def __init__(self, escalation: Escalation) -> None:
        failure = escalation.failure or _unexplained("CANCELLED", escalation.reason)
        super().__init__(failure, escalation.summary)
        self.escalation = escalation


def _unexplained(kind: str, message: str) -> Failure:
    # Imported here, not at the top: protocol.models imports this module.
    from .protocol.models import Failure, FailureKind

    return Failure.of(FailureKind(kind), message)
