"""Client SDK for the sandbox service: run agent code, get classified outcomes.

The root holds the first-time path: the two clients, the result and its failure, the
limits to ask for, the exceptions, and RecoveryPolicy for run(). The rest of run()'s
vocabulary is in `sandbox_client.recovery`, the wire contract in
`sandbox_client.protocol`, and a kit for tests in `sandbox_client.testing`."""

from . import _names
from ._client import AsyncSandboxClient, SandboxClient
from ._exceptions import EscalationRequired, ExecutionFailed, RequestRefused, SandboxError
from ._request import OutputChunk, Session
from .protocol.models import (
    Backend,
    ExecutionResult,
    Failure,
    FailureKind,
    Frame,
    Limits,
    SuggestedAction,
    Usage,
)
from .recovery._models import RecoveryPolicy

__all__ = [
    "AsyncSandboxClient",
    "Backend",
    "EscalationRequired",
    "ExecutionFailed",
    "ExecutionResult",
    "Failure",
    "FailureKind",
    "Frame",
    "Limits",
    "OutputChunk",
    "RecoveryPolicy",
    "RequestRefused",
    "SandboxClient",
    "SandboxError",
    "Session",
    "SuggestedAction",
    "Usage",
]

_names.publish(__name__, globals(), __all__)
