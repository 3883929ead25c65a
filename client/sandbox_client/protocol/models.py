"""The result and failure models every layer shares, and the failure taxonomy's defaults."""

from __future__ import annotations

import enum
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .._exceptions import ExecutionFailed


class Backend(enum.StrEnum):
    AUTO = "auto"
    MONTY = "monty"
    CONTAINER = "container"


class FailureKind(enum.StrEnum):
    SYNTAX_ERROR = "SYNTAX_ERROR"
    RUNTIME_ERROR = "RUNTIME_ERROR"
    TIMEOUT = "TIMEOUT"
    MEMORY_LIMIT = "MEMORY_LIMIT"
    OUTPUT_LIMIT = "OUTPUT_LIMIT"
    POLICY_VIOLATION = "POLICY_VIOLATION"
    UNSUPPORTED = "UNSUPPORTED"
    SANDBOX_CRASH = "SANDBOX_CRASH"
    INFRA_UNAVAILABLE = "INFRA_UNAVAILABLE"
    THROTTLED = "THROTTLED"
    CANCELLED = "CANCELLED"
    INVALID_REQUEST = "INVALID_REQUEST"
    CORRUPT_STATE = "CORRUPT_STATE"
    TOOL_ERROR = "TOOL_ERROR"


class SuggestedAction(enum.StrEnum):
    RETRY = "RETRY"
    REPAIR = "REPAIR"
    FALLBACK = "FALLBACK"
    ESCALATE = "ESCALATE"
    ABORT = "ABORT"


# kind -> (retry the same code may succeed, what to do by default). The README's taxonomy
# table is this mapping; test_taxonomy pins the two together.
KIND_DEFAULTS: dict[FailureKind, tuple[bool, SuggestedAction]] = {
    FailureKind.SYNTAX_ERROR: (False, SuggestedAction.REPAIR),
    FailureKind.RUNTIME_ERROR: (False, SuggestedAction.REPAIR),
    FailureKind.TIMEOUT: (False, SuggestedAction.REPAIR),
    FailureKind.MEMORY_LIMIT: (False, SuggestedAction.REPAIR),
    FailureKind.OUTPUT_LIMIT: (False, SuggestedAction.REPAIR),
    FailureKind.POLICY_VIOLATION: (False, SuggestedAction.ESCALATE),
    FailureKind.UNSUPPORTED: (False, SuggestedAction.FALLBACK),
    FailureKind.SANDBOX_CRASH: (True, SuggestedAction.RETRY),
    FailureKind.INFRA_UNAVAILABLE: (True, SuggestedAction.RETRY),
    FailureKind.THROTTLED: (True, SuggestedAction.RETRY),
    FailureKind.CANCELLED: (False, SuggestedAction.ABORT),
    FailureKind.INVALID_REQUEST: (False, SuggestedAction.ABORT),
    FailureKind.CORRUPT_STATE: (True, SuggestedAction.RETRY),
    # A tool's failure carries the tool's own kind in details; these are the fallbacks.
    FailureKind.TOOL_ERROR: (False, SuggestedAction.REPAIR),
}


class Limits(BaseModel):
    """Limits a request asks for; None keeps the policy's value. They can only lower it.
    The one list of limit names: the proto's Limits message, the server's effective
    limits and the policy's fields are pinned to it by tests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wall_time_ms: int | None = Field(default=None, ge=0)
    memory_bytes: int | None = Field(default=None, ge=0)
    output_bytes: int | None = Field(default=None, ge=0)
    max_recursion_depth: int | None = Field(default=None, ge=0)
    cpu_millis: int | None = Field(default=None, ge=0)
    pids: int | None = Field(default=None, ge=0)
    disk_bytes: int | None = Field(default=None, ge=0)


LIMIT_FIELDS: tuple[str, ...] = tuple(Limits.model_fields)


class Frame(BaseModel):
    """One traceback frame; line and column are 1-based."""

    model_config = ConfigDict(frozen=True)

    filename: str = ""
    line: int = 0
    column: int = 0
    end_line: int = 0
    end_column: int = 0
    function_name: str = ""
    source_line: str = ""


class Failure(BaseModel):
    """Why an execution did not succeed, and what to do about it."""

    model_config = ConfigDict(frozen=True)

    kind: FailureKind
    retryable: bool
    suggested_action: SuggestedAction
    retry_after_ms: int = 0
    message: str = ""
    exception_type: str = ""
    frames: tuple[Frame, ...] = ()
    details: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, kind: FailureKind, message: str, **fields: Any) -> Failure:
        """A failure of `kind` with the taxonomy's default retryability and action."""
        retryable, action = KIND_DEFAULTS[kind]
        fields.setdefault("retryable", retryable)
        fields.setdefault("suggested_action", action)
        return cls(kind=kind, message=message, **fields)

    @property
    def line(self) -> int | None:
        """The line of the innermost frame, if any: where the failure happened."""
        return self.frames[-1].line if self.frames else None


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    wall_ms: int = 0
    cpu_ms: int | None = None
    peak_memory_bytes: int | None = None


class ExecutionResult(BaseModel):
    """What happened to one execution. `failure` is None exactly when `ok` is true."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    execution_id: str = ""
    backend: Backend | None = None
    fallback_from: Backend | None = None
    # Why AUTO moved to `backend` (set with fallback_from).
    fallback_reason: str = ""
    # Monty ran code it is known to answer differently from CPython (MONTY, or AUTO with
    # nowhere to move): the result may not be what CPython gives.
    fidelity_warning: str = ""
    stdout: str = ""
    stdout_truncated: bool = False
    stderr: str = ""
    stderr_truncated: bool = False
    result_json: str | None = None
    exit_code: int = 0
    failure: Failure | None = None
    usage: Usage = Field(default_factory=Usage)
    policy_name: str = ""
    policy_digest: str = ""
    session_id: str = ""
    replayed: bool = False

    @property
    def result(self) -> Any:
        """The last expression's value decoded from JSON (None when there was none)."""
        return None if self.result_json is None else json.loads(self.result_json)

    @classmethod
    def failed(cls, failure: Failure, **fields: Any) -> ExecutionResult:
        fields.setdefault("exit_code", 1)
        return cls(ok=False, failure=failure, **fields)

    def raise_for_failure(self) -> ExecutionResult:
        """Returns this result when it is ok, so calls chain
        (`client.execute(code).raise_for_failure().result`); raises ExecutionFailed,
        carrying it, when it is not."""
        if not self.ok:
            raise ExecutionFailed(self)
        return self
