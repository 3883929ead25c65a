"""The recovery decisions without a server: a scripted `execute` stands in for the client
(the seam run_sync takes), so each rule can be hit exactly. The same rules are exercised
end to end in test_recovery_server."""

from __future__ import annotations

import io
import time
from collections.abc import Iterable
from typing import Any

import pytest
from pydantic import ValidationError

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
from sandbox_client.recovery import (
    Abort,
    ApproveCode,
    Escalation,
    Outcome,
    RecoveryAction,
    TerminalPrompt,
)
from sandbox_client.recovery._run import run_sync
from sandbox_client.recovery._state import RunState

A = RecoveryAction
K = FailureKind
QUICK = RecoveryPolicy(wait_initial_s=0.01, wait_max_s=0.02, wait_jitter_s=0.0)


class Script:
    """Answers each execute() with the next scripted result; records the calls."""

    def __init__(self, results: Iterable[ExecutionResult]) -> None:
        self.results = list(results)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, code: str, **kwargs: Any) -> ExecutionResult:
        self.calls.append({"code": code, **kwargs})
        if self.results:
            return self.results.pop(0)
        return ExecutionResult(ok=True, execution_id=f"exe_{len(self.calls)}", result_json="1")


def failed(kind: FailureKind, *, ran: bool = True, **fields: Any) -> ExecutionResult:
    """A failed result; `ran=False` is a request or transport error (no execution id),
    whose failure carries the gRPC status it came as (`grpc_code`)."""
    failure = Failure.of(kind, f"{kind.value} happened", **fields)
    if "grpc_code" in fields:
        failure = RequestFailure(**dict(failure), grpc_code=fields["grpc_code"])
    return ExecutionResult.failed(failure, execution_id="exe_x" if ran else "")


def run(script: Script, code: str = "x", recovery: RecoveryPolicy = QUICK, **kw: Any) -> Outcome:
    repair = kw.pop("repair", None)
    escalate = kw.pop("escalate", None)
    options = {"backend": Backend.AUTO, "timeout_s": 10.0, **kw}  # the rest: execute()'s
    state = RunState(code, recovery=recovery, options=options, can_repair=repair is not None)
    return run_sync(script, state, repair=repair, escalate=escalate)


def test_each_approval_opens_a_fresh_budget_of_max_attempts_not_a_growing_one() -> None:
    # A person approved new code three times; each approval buys max_attempts (1) more
    # attempts, so the UNSUPPORTED fourth attempt has none left to fall back with.
    script = Script([failed(K.SYNTAX_ERROR)] * 3 + [failed(K.UNSUPPORTED)])
    fresh = iter(["a", "b", "c"])
    recovery = RecoveryPolicy(max_attempts=1, max_escalations=3)
    outcome = run(script, recovery=recovery, escalate=lambda _: ApproveCode(code=next(fresh)))
    assert len(script.calls) == 4
    assert outcome.attempts[-1].action is A.ABORT
    assert "used all 1 attempts" in outcome.attempts[-1].note


def test_throttled_waits_at_least_retry_after_ms() -> None:
    script = Script([failed(K.THROTTLED, ran=False, retry_after_ms=300)])
    started = time.monotonic()
    outcome = run(script)
    assert time.monotonic() - started >= 0.3
    first = outcome.attempts[0]
    assert (first.failure_kind, first.action) == (K.THROTTLED, A.WAIT)
    assert 0.3 <= first.delay_s < 0.5


def test_a_wait_longer_than_max_wait_escalates_instead() -> None:
    script = Script([failed(K.THROTTLED, ran=False, retry_after_ms=120_000)])
    with pytest.raises(EscalationRequired) as raised:
        run(script)
    assert "exceeds max_wait_s" in raised.value.escalation.reason
    assert len(script.calls) == 1


def test_transport_failures_reuse_the_key_and_answers_renew_it() -> None:
    script = Script(
        [
            failed(K.INFRA_UNAVAILABLE, ran=False, grpc_code="UNAVAILABLE"),
            failed(K.INFRA_UNAVAILABLE, ran=False, grpc_code="UNAVAILABLE"),
            failed(K.SANDBOX_CRASH),  # ran and crashed: the retry is a new execution
        ]
    )
    run(script, idempotency_key="job-7")
    keys = [c["idempotency_key"] for c in script.calls]
    assert keys == ["job-7", "job-7", "job-7", "job-7.1"]


def test_repair_that_returns_failed_code_is_refused() -> None:
    script = Script([failed(K.RUNTIME_ERROR), failed(K.RUNTIME_ERROR)])
    answers = iter(["x", "y", "x"])  # "x" already failed; "y" fails too; "x" again
    with pytest.raises(EscalationRequired) as raised:
        run(script, repair=lambda code, failure: next(answers))
    assert [c["code"] for c in script.calls] == ["x", "y"]
    assert "already failed" in raised.value.escalation.attempts[0].note


def test_repair_returning_nothing_or_raising_is_handled() -> None:
    answers: list[Any] = [None, RuntimeError("model overloaded"), "fixed"]

    def repair(code: str, failure: Failure) -> str | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    outcome = run(Script([failed(K.SYNTAX_ERROR)]), repair=repair)
    assert outcome.ok and outcome.code == "fixed"
    note = outcome.attempts[0].note
    assert "returned NoneType" in note and "RuntimeError: model overloaded" in note


def test_corrupt_state_in_a_session_is_not_retried() -> None:
    with pytest.raises(EscalationRequired) as raised:
        run(Script([failed(K.CORRUPT_STATE, ran=False)]), session_id="ses_1")
    assert "fresh session" in raised.value.escalation.reason


def test_resize_uses_the_limit_the_server_reports_and_the_client_cap() -> None:
    mem = failed(K.MEMORY_LIMIT, details={"limit": "memory_bytes", "limit_value": "100"})
    recovery = QUICK.model_copy(update={"resize_max_memory_bytes": 300})
    outcome = run(Script([mem, mem, mem]), recovery=recovery, repair=lambda c, f: "smaller")
    assert [a.limits.memory_bytes if a.limits else None for a in outcome.attempts] == [
        None,
        200,
        300,
        300,
    ]
    assert [a.action for a in outcome.attempts] == [A.RESIZE, A.RESIZE, A.REPAIR, None]


def test_the_time_budget_bounds_the_sleeps_too() -> None:
    # Every retry's backoff is 1 s; a 2.5 s budget would have slept past itself.
    slow = RecoveryPolicy(
        max_total_s=2.5, wait_initial_s=1.0, wait_max_s=1.0, wait_jitter_s=0.0, wait_exp_base=1
    )
    started = time.monotonic()
    with pytest.raises(EscalationRequired) as raised:
        run(Script([failed(K.SANDBOX_CRASH)] * 10), recovery=slow)
    took = time.monotonic() - started
    assert took < 2.5, took
    assert len(raised.value.escalation.attempts) == 3  # sleeps of 1 s after the 1st and 2nd
    assert "the wait would outlast the time budget" in raised.value.escalation.reason


def test_backoff_grows_exponentially_up_to_its_cap() -> None:
    sleeps: list[float] = []
    recovery = RecoveryPolicy(wait_initial_s=0.1, wait_max_s=0.3, wait_jitter_s=0.0)
    script = Script([failed(K.SANDBOX_CRASH)] * 3)  # the default budget: 3 retries
    options = {"backend": Backend.AUTO, "timeout_s": 10.0}
    state = RunState("x", recovery=recovery, options=options, can_repair=False)
    import sandbox_client.recovery._run as driver

    real_sleep = driver.time.sleep
    driver.time.sleep = sleeps.append  # type: ignore[assignment]
    try:
        assert run_sync(script, state, repair=None, escalate=None).ok
    finally:
        driver.time.sleep = real_sleep
    assert sleeps == pytest.approx([0.1, 0.2, 0.3])


def test_retries_are_logged_quietly(capfd: pytest.CaptureFixture[str]) -> None:
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("sandbox_client.recovery")
    assert run(Script([failed(K.SANDBOX_CRASH)])).ok
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # nothing on the console when logging is not configured
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert run(Script([failed(K.SANDBOX_CRASH)])).ok
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert [r.getMessage().split(" in ")[0] for r in records] == ["retrying after SANDBOX_CRASH"]


def test_an_approval_of_already_failed_code_aborts() -> None:
    outcome = run(Script([failed(K.POLICY_VIOLATION)]), escalate=lambda e: ApproveCode(code="x"))
    assert outcome.status == "aborted"
    assert len(outcome.attempts) == 1


def test_escalations_are_bounded() -> None:
    script = Script([failed(K.POLICY_VIOLATION)] * 10)
    codes = iter(f"v{i}" for i in range(10))
    recovery = QUICK.model_copy(update={"max_escalations": 2})
    outcome = run(script, recovery=recovery, escalate=lambda e: ApproveCode(code=next(codes)))
    assert outcome.status == "escalated"
    assert len(outcome.escalations) == 2 and len(script.calls) == 3
    assert outcome.attempts[-1].action is A.ABORT


def test_recovery_policy_refuses_blind_retries_and_unreachable_actions() -> None:
    with pytest.raises(ValidationError, match="same code again"):
        RecoveryPolicy(actions={K.RUNTIME_ERROR: (A.RETRY,)})
    with pytest.raises(ValidationError, match="RESIZE applies"):
        RecoveryPolicy(actions={K.SYNTAX_ERROR: (A.RESIZE,)})
    with pytest.raises(ValidationError, match="nothing after"):
        RecoveryPolicy(actions={K.TIMEOUT: (A.ESCALATE, A.REPAIR)})
    partial = RecoveryPolicy(actions={K.TIMEOUT: (A.REPAIR,)}, budget_per_kind={K.TIMEOUT: 1})
    assert partial.actions[K.TIMEOUT] == (A.REPAIR,)
    assert partial.actions[K.MEMORY_LIMIT] == (A.RESIZE, A.REPAIR)  # defaults kept
    assert partial.budget_per_kind[K.SANDBOX_CRASH] == 3


def test_terminal_prompt_reads_an_answer() -> None:
    escalation = Escalation(
        reason="r", code="x", failure=None, attempts=(), budget_exhausted=False, summary="S"
    )
    lines = iter(["huh", "c", "print('fixed')", ".", "unused"])
    out = io.StringIO()
    answer = TerminalPrompt(read=lambda prompt: next(lines), out=out)(escalation)
    assert answer == ApproveCode(code="print('fixed')", note="written at the terminal")
    assert "not understood" in out.getvalue() and "S" in out.getvalue()
    policy = TerminalPrompt(read=lambda prompt: "p roomy", out=out)(escalation)
    assert policy.kind == "approve_policy" and policy.policy == "roomy"  # type: ignore[union-attr]
    assert TerminalPrompt(read=lambda prompt: "a", out=out)(escalation) == Abort(
        note="aborted at the terminal"
    )


def test_limits_in_history_are_what_was_sent() -> None:
    script = Script([failed(K.TIMEOUT, details={"limit": "wall_time_ms", "limit_value": "1000"})])
    outcome = run(script, limits=Limits(memory_bytes=5))
    assert script.calls[1]["limits"] == Limits(memory_bytes=5, wall_time_ms=2000)
    assert outcome.attempts[1].limits == Limits(memory_bytes=5, wall_time_ms=2000)
