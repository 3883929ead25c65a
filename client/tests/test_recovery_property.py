"""Property: whatever the server answers, in whatever order, and whatever the repair
function and the escalation handler do, run() never sends again a request (same code,
backend, policy and limits) whose code failed for a reason of its own, never retries a
failure the server called non-retryable, and stays within its budgets."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_recovery_unit import Script

from sandbox_client import (
    Backend,
    EscalationRequired,
    ExecutionResult,
    Failure,
    FailureKind,
    Limits,
    RecoveryPolicy,
)
from sandbox_client._request import RequestFailure
from sandbox_client.protocol.models import KIND_DEFAULTS
from sandbox_client.recovery import Abort, ApproveCode, ApprovePolicy, RecoveryAction
from sandbox_client.recovery._run import run_sync
from sandbox_client.recovery._state import RunState, code_sha256

A = RecoveryAction
FIELDS = ["", "", "", "backend", "limits.memory_bytes", "limits.wall_time_ms", "policy"]


@st.composite
def results(draw: st.DrawFn) -> ExecutionResult:
    if draw(st.integers(0, 6)) == 0:
        return ExecutionResult(ok=True, execution_id="exe_ok", result_json="1")
    kind = draw(st.sampled_from(list(FailureKind)))
    retryable, action = KIND_DEFAULTS[kind]
    details: dict[str, str] = {}
    if field := draw(st.sampled_from(FIELDS)):
        details["field"] = field
    if kind in (FailureKind.MEMORY_LIMIT, FailureKind.TIMEOUT) and draw(st.booleans()):
        name = "memory_bytes" if kind is FailureKind.MEMORY_LIMIT else "wall_time_ms"
        details.update(limit=name, limit_value=str(draw(st.integers(1, 2**20))))
    grpc_code = draw(st.sampled_from(["", "UNAVAILABLE"]))
    failure = RequestFailure(
        kind=kind,
        # Mostly the taxonomy's flag, sometimes a server's own say (TOOL_ERROR etc.).
        retryable=draw(st.sampled_from([retryable, retryable, retryable, not retryable])),
        suggested_action=action,
        retry_after_ms=draw(st.sampled_from([0, 0, 1, 5])),
        message=kind.value,
        details=details,
        grpc_code=grpc_code,
    )
    ran = draw(st.booleans())
    return ExecutionResult.failed(failure, execution_id="exe_x" if ran else "")


REPAIRS = st.sampled_from(["new", "same", "old", "none", "raise"])
ANSWERS = st.sampled_from(["new", "old", "policy", "abort", "raise"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    answers=st.lists(results(), max_size=30),
    repairs=st.lists(REPAIRS, min_size=30, max_size=30),
    escalations=st.lists(ANSWERS, min_size=10, max_size=10),
    backend=st.sampled_from(list(Backend)),
    limits=st.sampled_from([None, Limits(memory_bytes=1000), Limits(wall_time_ms=50)]),
    with_repair=st.booleans(),
    max_attempts=st.integers(1, 12),
    budget=st.integers(0, 4),
)
def test_no_code_is_rerun_after_failing_for_its_own_reason(
    answers: list[ExecutionResult],
    repairs: list[str],
    escalations: list[str],
    backend: Backend,
    limits: Limits | None,
    with_repair: bool,
    max_attempts: int,
    budget: int,
) -> None:
    script = Script(answers)
    fresh = (f"code {i}" for i in itertools.count())
    seen: list[str] = ["code start"]

    def repair(code: str, failure: Failure) -> Any:
        what = repairs.pop(0) if repairs else "none"
        if what == "raise":
            raise ValueError("repair broke")
        if what == "none":
            return None
        new = {"new": next(fresh), "same": code, "old": seen[0]}[what]
        seen.append(new)
        return new

    def escalate(escalation: Any) -> Any:
        what = escalations.pop(0) if escalations else "abort"
        if what == "raise":
            raise EscalationRequired(escalation)
        if what == "new":
            return ApproveCode(code=next(fresh))
        if what == "old":
            return ApproveCode(code=seen[0])
        if what == "policy":
            return ApprovePolicy(policy=f"p{len(escalations)}")
        return Abort()

    recovery = RecoveryPolicy(
        max_attempts=max_attempts,
        budget_per_kind={k: budget for k in FailureKind},
        max_escalations=3,
        wait_initial_s=0,  # no sleeping in here
        wait_max_s=0,
        wait_jitter_s=0,
    )
    state = RunState(
        "code start",
        recovery=recovery,
        options={"backend": backend, "limits": limits, "timeout_s": 5},
        can_repair=with_repair,
    )
    try:
        outcome = run_sync(script, state, repair=repair if with_repair else None, escalate=escalate)
        attempts = outcome.attempts
    except EscalationRequired as raised:
        attempts = raised.escalation.attempts

    calls = script.calls
    assert len(attempts) == len(calls)
    failed_own: set[tuple[str, Any, Any, Any]] = set()
    for call, attempt in zip(calls, attempts, strict=True):
        request = (
            code_sha256(call["code"]),
            Backend(call["backend"]),
            call["policy"],
            call["limits"] or Limits(),
        )
        assert request not in failed_own, f"re-ran failed code: {attempts}"
        assert attempt.code_sha256 == request[0]
        result = answers[attempt.number - 1] if attempt.number <= len(answers) else None
        if result is None or result.failure is None:
            continue
        if not result.failure.retryable:
            failed_own.add(request)
            assert attempt.action not in (A.RETRY, A.WAIT)
        if result.failure.kind in (FailureKind.INVALID_REQUEST, FailureKind.CANCELLED) and (
            attempt.number == 1 or attempts[attempt.number - 2].action in (A.RETRY, A.WAIT)
        ):
            # Nothing was changed by us, so nothing is ours to undo: stop.
            assert attempt.action in (A.ABORT, None) or "refused" in attempt.note
    # Each escalation answer opens a fresh budget of max_attempts, never more.
    assert len(calls) <= max_attempts * 4
