"""The recovery layer's vocabulary: what to do about each failure kind (RecoveryPolicy),
what happened (Attempt, Outcome), and how a person is asked (Escalation and its answers).

Pure data and small helpers; the decisions live in _state, the I/O in _run."""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Mapping
from typing import Annotated, Literal, NoReturn, TextIO

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .._exceptions import EscalationRequired
from ..protocol.models import (
    KIND_DEFAULTS,
    Backend,
    ExecutionResult,
    Failure,
    FailureKind,
    Limits,
)


class RecoveryAction(enum.StrEnum):
    """What `run()` does after a failed attempt."""

    RETRY = "RETRY"  # the same request again, after jittered exponential backoff
    WAIT = "WAIT"  # the same request again, after the server's retry_after_ms
    FALLBACK = "FALLBACK"  # the same code on the fallback backend
    REPAIR = "REPAIR"  # the caller's repair function rewrites the code
    RESIZE = "RESIZE"  # the same code with a larger memory or time limit
    ESCALATE = "ESCALATE"  # ask the escalation handler (a person, by default an exception)
    ABORT = "ABORT"  # stop and return the failure


A = RecoveryAction
_TERMINAL = frozenset({A.ESCALATE, A.ABORT})
# Only these actions run byte-identical code again, so only failures that are not the
# code's own fault may lead to them.
SAME_REQUEST = frozenset({A.RETRY, A.WAIT})
# The limit each resizable kind grows, as named in Limits and in a failure's details.
RESIZABLE: Mapping[FailureKind, str] = {
    FailureKind.MEMORY_LIMIT: "memory_bytes",
    FailureKind.TIMEOUT: "wall_time_ms",
}

DEFAULT_ACTIONS: Mapping[FailureKind, tuple[RecoveryAction, ...]] = {
    FailureKind.SYNTAX_ERROR: (A.REPAIR,),
    FailureKind.RUNTIME_ERROR: (A.REPAIR,),
    FailureKind.TIMEOUT: (A.RESIZE, A.REPAIR),
    FailureKind.MEMORY_LIMIT: (A.RESIZE, A.REPAIR),
    FailureKind.OUTPUT_LIMIT: (A.REPAIR,),
    FailureKind.POLICY_VIOLATION: (A.ESCALATE,),
    FailureKind.UNSUPPORTED: (A.FALLBACK, A.REPAIR),
    FailureKind.SANDBOX_CRASH: (A.RETRY,),
    FailureKind.INFRA_UNAVAILABLE: (A.RETRY,),
    FailureKind.THROTTLED: (A.WAIT,),
    FailureKind.CANCELLED: (A.ABORT,),
    FailureKind.INVALID_REQUEST: (A.ABORT,),
    FailureKind.CORRUPT_STATE: (A.RETRY,),
    FailureKind.TOOL_ERROR: (A.REPAIR,),
}

DEFAULT_BUDGETS: Mapping[FailureKind, int] = {
    FailureKind.SYNTAX_ERROR: 3,
    FailureKind.RUNTIME_ERROR: 3,
    FailureKind.TIMEOUT: 5,  # a few resizes, then repairs
    FailureKind.MEMORY_LIMIT: 5,
    FailureKind.OUTPUT_LIMIT: 3,
    FailureKind.POLICY_VIOLATION: 0,
    FailureKind.UNSUPPORTED: 3,  # one fallback, then repairs
    FailureKind.SANDBOX_CRASH: 3,
    FailureKind.INFRA_UNAVAILABLE: 6,
    FailureKind.THROTTLED: 6,
    FailureKind.CANCELLED: 0,
    FailureKind.INVALID_REQUEST: 0,
    FailureKind.CORRUPT_STATE: 2,
    FailureKind.TOOL_ERROR: 3,
}

PositiveSeconds = Annotated[float, Field(gt=0)]


class RecoveryPolicy(BaseModel):
    """How `run()` reacts to each failure kind, and the bounds on all of it.

    `actions[kind]` is a chain tried in order: an action that does not apply (no repair
    function, the limit cannot grow, the backend is already the fallback) or whose kind
    has used its budget gives way to the next; when the chain runs out, run() escalates.
    Kinds left out keep DEFAULT_ACTIONS / DEFAULT_BUDGETS."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    actions: dict[FailureKind, tuple[RecoveryAction, ...]] = Field(
        default_factory=lambda: dict(DEFAULT_ACTIONS)
    )
    # How many times a failure of each kind may be acted on (retried, repaired, ...).
    budget_per_kind: dict[FailureKind, int] = Field(default_factory=lambda: dict(DEFAULT_BUDGETS))
    # Executions per run (transport failures included), and wall time for all of them
    # with the waits in between. Exhausting either escalates.
    max_attempts: int = Field(default=12, ge=1)
    max_total_s: PositiveSeconds = 120.0
    # Escalation answers accepted per run before the run aborts, so a handler that keeps
    # approving cannot loop forever.
    max_escalations: int = Field(default=3, ge=0)
    # RETRY backoff for the n-th retry in a row: min(wait_max_s, wait_initial_s *
    # wait_exp_base ** (n - 1) + random(0, wait_jitter_s)). A server's retry_after_ms
    # replaces it when set.
    wait_initial_s: float = Field(default=0.1, ge=0)
    wait_max_s: float = Field(default=5.0, ge=0)
    wait_jitter_s: float = Field(default=1.0, ge=0)
    wait_exp_base: float = Field(default=2.0, ge=1)
    # The longest single wait for a retry_after_ms; a longer one escalates instead.
    max_wait_s: PositiveSeconds = 60.0
    # RESIZE multiplies the limit by this, up to the caps below (None: up to whatever the
    # server's policy allows; a refusal from the server ends resizing).
    resize_factor: float = Field(default=2.0, gt=1)
    resize_max_memory_bytes: int | None = Field(default=None, gt=0)
    resize_max_wall_time_ms: int | None = Field(default=None, gt=0)
    fallback_backend: Backend = Backend.CONTAINER

    @field_validator("actions", mode="after")
    @classmethod
    def _check_actions(
        cls, value: dict[FailureKind, tuple[RecoveryAction, ...]]
    ) -> dict[FailureKind, tuple[RecoveryAction, ...]]:
        merged = dict(DEFAULT_ACTIONS)
        merged.update(value)
        for kind, chain in merged.items():
            retryable, _ = KIND_DEFAULTS[kind]
            for i, action in enumerate(chain):
                if action in SAME_REQUEST and not retryable:
                    raise ValueError(
                        f"{kind.value} is the code's own failure; {action.value} would run "
                        "the same code again for nothing (use REPAIR, RESIZE or FALLBACK)"
                    )
                if action is A.RESIZE and kind not in RESIZABLE:
                    raise ValueError(f"RESIZE applies to {sorted(RESIZABLE)}, not {kind.value}")
                if action in _TERMINAL and i != len(chain) - 1:
                    raise ValueError(f"{kind.value}: nothing after {action.value} can run")
        return merged

    @field_validator("budget_per_kind", mode="after")
    @classmethod
    def _merge_budgets(cls, value: dict[FailureKind, int]) -> dict[FailureKind, int]:
        if any(v < 0 for v in value.values()):
            raise ValueError("budgets cannot be negative")
        merged = dict(DEFAULT_BUDGETS)
        merged.update(value)
        return merged

    def resize_cap(self, limit: str) -> int | None:
        return {
            "memory_bytes": self.resize_max_memory_bytes,
            "wall_time_ms": self.resize_max_wall_time_ms,
        }.get(limit)


class Attempt(BaseModel):
    """One execution `run()` made, and what it did next."""

    model_config = ConfigDict(frozen=True)

    number: int  # 1-based
    code_sha256: str
    backend: Backend  # as requested
    ran_on: Backend | None = None  # as reported by the server
    policy: str = ""
    limits: Limits | None = None
    idempotency_key: str
    ok: bool
    failure_kind: FailureKind | None = None
    grpc_code: str = ""  # set when the failure was a request or transport error
    message: str = ""
    execution_id: str = ""
    elapsed_s: float = 0.0
    action: RecoveryAction | None = None  # None after a success
    delay_s: float = 0.0  # slept between this attempt and the next (RETRY, WAIT)
    note: str = ""  # e.g. why an action was skipped, or what a repair function raised


class Escalation(BaseModel):
    """What a person (or a framework standing in for one) is asked to decide."""

    model_config = ConfigDict(frozen=True)

    reason: str
    code: str
    failure: Failure | None
    attempts: tuple[Attempt, ...]
    budget_exhausted: bool
    summary: str  # one paragraph, fit to show a person


class ApproveCode(BaseModel):
    """Run this code instead (e.g. a person's fix)."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["approve_code"] = "approve_code"
    code: str = Field(min_length=1)
    note: str = ""


class ApprovePolicy(BaseModel):
    """Run the same code under another server policy (e.g. one that allows more)."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["approve_policy"] = "approve_policy"
    policy: str = Field(min_length=1)
    note: str = ""


class Abort(BaseModel):
    """Stop; `run()` returns an Outcome with status "aborted"."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["abort"] = "abort"
    note: str = ""


Resolution = ApproveCode | ApprovePolicy | Abort


class Outcome(BaseModel):
    """What `run()` returns: the final result and every attempt that led to it."""

    model_config = ConfigDict(frozen=True)

    # succeeded: the last attempt ran to completion. aborted: an ABORT kind
    # (INVALID_REQUEST, CANCELLED), or the escalation handler answered Abort.
    # escalated: the run needs a person again after max_escalations answers.
    status: Literal["succeeded", "aborted", "escalated"]
    result: ExecutionResult
    code: str  # the code that produced `result` (after any repairs)
    attempts: tuple[Attempt, ...]
    escalations: tuple[Escalation, ...] = ()
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def failure(self) -> Failure | None:
        return self.result.failure


def raise_escalation(escalation: Escalation) -> NoReturn:
    """The default escalation handler: raise EscalationRequired."""
    raise EscalationRequired(escalation)


class TerminalPrompt:
    """An escalation handler that asks whoever sits at the terminal.

    Answers: `a` aborts, `p NAME` approves policy NAME, `c` reads replacement code up to a
    line holding a single `.`. Blocking; with AsyncSandboxClient it blocks the loop while
    it waits, as an interactive prompt should."""

    def __init__(self, *, read: Callable[[str], str] = input, out: TextIO | None = None) -> None:
        self._read = read
        self._out = out

    def __call__(self, escalation: Escalation) -> Resolution:
        out = self._out or sys.stderr
        print(f"\n=== sandbox: a decision is needed ===\n{escalation.summary}\n", file=out)
        print("--- code ---", escalation.code.rstrip(), "------------", sep="\n", file=out)
        while True:
            answer = self._read("[a]bort, [p]olicy NAME, or [c]ode (end with '.'): ").strip()
            if answer in ("a", "abort"):
                return Abort(note="aborted at the terminal")
            if answer.startswith("p ") and answer[2:].strip():
                return ApprovePolicy(policy=answer[2:].strip(), note="approved at the terminal")
            if answer in ("c", "code"):
                lines = []
                while (line := self._read("")) != ".":
                    lines.append(line)
                if any(line.strip() for line in lines):
                    return ApproveCode(code="\n".join(lines), note="written at the terminal")
            print("not understood", file=out)


def summarize(
    *,
    reason: str,
    failure: Failure | None,
    attempts: tuple[Attempt, ...],
    elapsed_s: float,
) -> str:
    """One paragraph for a person: what was tried, how it ended, what they can do."""
    counts: dict[str, int] = {}
    for attempt in attempts:
        if attempt.failure_kind is not None:
            counts[attempt.failure_kind.value] = counts.get(attempt.failure_kind.value, 0) + 1
    seen = ", ".join(f"{kind} x{n}" for kind, n in counts.items()) or "none"
    actions = sorted({a.action.value for a in attempts if a.action is not None})
    last = (
        f"The last failure was {failure.kind.value}: {failure.message}"
        if failure is not None
        else "There was no failure to report"
    )
    return (
        f"The code was run {len(attempts)} time(s) over {elapsed_s:.1f} s without succeeding "
        f"(failures seen: {seen}; actions taken: {', '.join(actions) or 'none'}). "
        f"{last.rstrip('.')}. It was escalated because {reason}. "
        "You can approve new code, approve a different policy, or abort."
    )
