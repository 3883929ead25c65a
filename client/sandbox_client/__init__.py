"""Client SDK for the sandbox service: run agent code, get classified outcomes."""

from ._client import AsyncSandboxClient, SandboxClient
from ._models import (
    KIND_DEFAULTS,
    Backend,
    ExecutionResult,
    Failure,
    FailureKind,
    Frame,
    SuggestedAction,
    Usage,
)
from ._recovery import (
    DEFAULT_ACTIONS,
    DEFAULT_BUDGETS,
    Abort,
    ApproveCode,
    ApprovePolicy,
    Attempt,
    Escalation,
    EscalationRequired,
    Outcome,
    RecoveryAction,
    RecoveryPolicy,
    Resolution,
    TerminalPrompt,
    raise_escalation,
)
from ._recovery_run import EscalationHandler, RepairFn
from ._request import Limits, OutputChunk, SandboxError, Session

__all__ = [
    "DEFAULT_ACTIONS",
    "DEFAULT_BUDGETS",
    "KIND_DEFAULTS",
    "Abort",
    "ApproveCode",
    "ApprovePolicy",
    "AsyncSandboxClient",
    "Attempt",
    "Backend",
    "Escalation",
    "EscalationHandler",
    "EscalationRequired",
    "ExecutionResult",
    "Failure",
    "FailureKind",
    "Frame",
    "Limits",
    "Outcome",
    "OutputChunk",
    "RecoveryAction",
    "RecoveryPolicy",
    "RepairFn",
    "Resolution",
    "SandboxClient",
    "SandboxError",
    "Session",
    "SuggestedAction",
    "TerminalPrompt",
    "Usage",
    "raise_escalation",
]
