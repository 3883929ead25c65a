"""Client SDK for the sandbox service."""

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

__all__ = [
    "KIND_DEFAULTS",
    "Backend",
    "ExecutionResult",
    "Failure",
    "FailureKind",
    "Frame",
    "SuggestedAction",
    "Usage",
]
