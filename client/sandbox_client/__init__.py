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
from ._request import Limits, OutputChunk, SandboxError, Session

__all__ = [
    "KIND_DEFAULTS",
    "AsyncSandboxClient",
    "Backend",
    "ExecutionResult",
    "Failure",
    "FailureKind",
    "Frame",
    "Limits",
    "OutputChunk",
    "SandboxClient",
    "SandboxError",
    "Session",
    "SuggestedAction",
    "Usage",
]
