"""The recovery decisions, without I/O: one RunState per `run()` call, fed each result and
asked what to do next. The sync and async drivers (_run) only carry out what it says, so
both behave the same by construction and the property tests exercise this."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Literal

from .._request import ExecuteOptions, complete, grpc_code
from ..protocol.models import Backend, ExecutionResult, Failure, FailureKind, Limits
from ._models import (
    RESIZABLE,
    Abort,
    ApproveCode,
    ApprovePolicy,
    Attempt,
    Escalation,
    Outcome,
    RecoveryAction,
    RecoveryPolicy,
    Resolution,
    summarize,
)

A = RecoveryAction

Next = Literal["execute", "retry", "repair", "escalate", "done"]


@dataclasses.dataclass(frozen=True)
class Step:
    """What the driver does next. `backoff` (for "retry") is how long to sleep first,
    always within the run's time budget."""

    next: Next
    failure: Failure | None = None
    backoff: float = 0.0


@dataclasses.dataclass(frozen=True)
class Request:
    """One attempt to send: the code and the options execute() takes, as run() has them
    now (backend, limits and key change between attempts; the rest as the caller gave)."""

    code: str
    options: ExecuteOptions
    started: float  # the state's clock when the attempt began

    @property
    def backend(self) -> Backend:
        return Backend(self.options["backend"])

    @property
    def policy(self) -> str:
        return self.options["policy"]

    @property
    def limits(self) -> Limits | None:
        return self.options["limits"]

    @property
    def idempotency_key(self) -> str:
        return self.options["idempotency_key"] or ""


Signature = tuple[str, Backend, str, str]


@dataclasses.dataclass(frozen=True)
class _Change:
    """A change run() made to the request, so a refusal of exactly that field can be told
    apart from a failure of the code: a POLICY_VIOLATION for limits.memory_bytes after a
    RESIZE means "the server allows no more", not "the code misbehaved"."""

    action: RecoveryAction
    field: str  # as the server names it in ErrorInfo metadata: "limits.memory_bytes"
    origin: Failure  # the failure the change answered
    backend: Backend
    limits: Limits | None


def _signature(code: str, backend: Backend, policy: str, limits: Limits | None) -> Signature:
    dumped = limits.model_dump_json(exclude_none=True) if limits is not None else "{}"
    return (code_sha256(code), backend, policy, dumped)


def code_sha256(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()


class RunState:
    """Everything one `run()` knows. Not thread-safe; one driver owns it."""

    def __init__(
        self,
        code: str,
        *,
        recovery: RecoveryPolicy,
        options: ExecuteOptions,
        can_repair: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`options` are execute()'s, as the caller gave them to run(); `timeout_s`
        among them bounds each attempt."""
        given = complete(options)
        self.recovery = recovery
        self.code = code
        self.backend = Backend(given["backend"])
        # A backend the caller named is a choice; only AUTO (or no choice) may move.
        self.backend_chosen = self.backend is not Backend.AUTO
        self.policy = given["policy"]
        self.limits = given["limits"]
        self.session_id = given["session_id"]
        self.timeout_s = given["timeout_s"]
        self._given = given  # inputs and stdin go out as they came
        self.can_repair = can_repair
        self._clock = clock
        self.started = clock()
        self._budget_start = self.started  # reset when a person approves a way forward
        self._attempts_budget_from = 0  # the attempt count a fresh budget started at
        self.attempts: list[Attempt] = []
        self.escalations: list[Escalation] = []
        self.result: ExecutionResult | None = None
        self.status: Literal["succeeded", "aborted", "escalated"] | None = None
        self._used: Counter[FailureKind] = Counter()
        # (kind, action) pairs that can no longer help: the server refused the change.
        self._spent: set[tuple[FailureKind, RecoveryAction]] = set()
        # Requests whose code failed for a reason of its own: never sent again.
        self._failed: set[Signature] = set()
        self._change: _Change | None = None
        self._last_failure: Failure | None = None
        self._escalation_reason = ""
        self._budget_gone = False
        self._key_base = given["idempotency_key"] or "idk_" + uuid.uuid4().hex
        self._key_index = 0
        self._keep_key = True
        self._last_end = 0.0
        self._deadline_cut = False
        self._wait_s = 0.0  # the next retry's sleep, once _why_not has allowed it

    # -- budgets -------------------------------------------------------------------

    def remaining_s(self) -> float:
        return self.recovery.max_total_s - (self._clock() - self._budget_start)

    def _wait_for(self, failure: Failure) -> float:
        """The sleep before retrying the same request. The server's retry-after wins (a
        little jitter above it spreads a herd); otherwise jittered exponential backoff,
        min(wait_max_s, wait_initial_s * wait_exp_base ** (n - 1) + U(0, wait_jitter_s))
        for the n-th retry in a row."""
        if failure.retry_after_ms > 0:
            return failure.retry_after_ms / 1000 * (1 + random.uniform(0, 0.1))
        r = self.recovery
        in_a_row = 1
        for attempt in reversed(self.attempts[:-1]):
            if attempt.action not in (A.RETRY, A.WAIT):
                break
            in_a_row += 1
        exponential = r.wait_initial_s * r.wait_exp_base ** (in_a_row - 1)
        return min(r.wait_max_s, exponential + random.uniform(0, r.wait_jitter_s))

    def _out_of_budget(self) -> str:
        if len(self.attempts) - self._attempts_budget_from >= self.recovery.max_attempts:
            return f"the run used all {self.recovery.max_attempts} attempts"
        if self.remaining_s() <= 0:
            return f"the run used its {self.recovery.max_total_s:g} s"
        return ""

    # -- requests ------------------------------------------------------------------

    def signature(self, code: str | None = None) -> Signature:
        """What makes two requests the same run: code, backend, policy and limits."""
        code = self.code if code is None else code
        return _signature(code, self.backend, self.policy, self.limits)

    def next_request(self) -> Request | None:
        """The request to send now, or None when the budget is gone (then `step()` after
        `out_of_budget()` says what to do)."""
        if self._out_of_budget():
            return None
        assert self.signature() not in self._failed, "would repeat code that failed"
        if not self._keep_key:
            self._key_index += 1
            self._keep_key = True
        key = self._key_base if self._key_index == 0 else f"{self._key_base}.{self._key_index}"
        remaining = self.remaining_s()
        timeout = self.timeout_s if self.timeout_s is not None else math.inf
        self._deadline_cut = remaining < timeout
        options: ExecuteOptions = {
            **self._given,
            "backend": self.backend,
            "policy": self.policy,
            "limits": self.limits,
            "idempotency_key": key,
            "timeout_s": min(timeout, remaining),
        }
        return Request(code=self.code, options=options, started=self._clock())

    # -- results -------------------------------------------------------------------

    def record(self, request: Request, result: ExecutionResult) -> Step:
        """Takes one attempt's result and decides what follows it."""
        started, ended = request.started, self._clock()
        if self.attempts and self.attempts[-1].action in (A.RETRY, A.WAIT):
            self.attempts[-1] = self.attempts[-1].model_copy(
                update={"delay_s": round(started - self._last_end, 4)}
            )
        self._last_end = ended
        failure = result.failure
        attempt = Attempt(
            number=len(self.attempts) + 1,
            code_sha256=code_sha256(request.code),
            backend=request.backend,
            ran_on=result.backend,
            policy=request.policy,
            limits=request.limits,
            idempotency_key=request.idempotency_key,
            ok=result.ok,
            failure_kind=failure.kind if failure is not None else None,
            grpc_code=grpc_code(failure),
            message=failure.message if failure is not None else "",
            execution_id=result.execution_id,
            elapsed_s=round(ended - started, 4),
        )
        self.attempts.append(attempt)
        self.result = result
        # A key names one execution: keep it only while no execution has answered to it
        # (transport failures, refusals), so the server's journal can dedupe the retry.
        self._keep_key = not result.execution_id
        if result.ok or failure is None:
            self.status = "succeeded"
            self._change = None
            return Step("done")
        if not failure.retryable:
            self._failed.add(
                _signature(request.code, request.backend, request.policy, request.limits)
            )

        note = ""
        change, self._change = self._change, None
        if change is not None and self._refuses(failure, change):
            # The server will not allow what we changed; go on with what the change was
            # for, from the request as it was before.
            self._spent.add((change.origin.kind, change.action))
            self.backend, self.limits = change.backend, change.limits
            note = f"the server refused {change.field}; {change.action.value} ends here"
            failure = change.origin
        elif (
            self._deadline_cut
            and failure.kind is FailureKind.CANCELLED
            and grpc_code(failure) == "DEADLINE_EXCEEDED"
        ):
            return self._finish_attempt(self._escalate("the run used its time budget", failure))
        self._last_failure = failure
        return self._finish_attempt(self._decide(failure), note)

    def _refuses(self, failure: Failure, change: _Change) -> bool:
        return failure.details.get("field") == change.field and failure.kind in (
            FailureKind.POLICY_VIOLATION,
            FailureKind.INVALID_REQUEST,
            FailureKind.INFRA_UNAVAILABLE,  # "the container backend is not enabled here"
        )

    def _finish_attempt(self, decided: tuple[Step, RecoveryAction, str], note: str = "") -> Step:
        step, action, why = decided
        notes = "; ".join(n for n in (note, why) if n)
        self.attempts[-1] = self.attempts[-1].model_copy(update={"action": action, "note": notes})
        return step

    def _decide(self, failure: Failure) -> tuple[Step, RecoveryAction, str]:
        kind = failure.kind
        skipped: list[str] = []
        budget_hit = False
        for action in self.recovery.actions.get(kind, ()):
            if action is A.ABORT:
                self.status = "aborted"
                return Step("done", failure), action, ""
            if action is A.ESCALATE:
                return self._escalate(f"{kind.value} calls for a person", failure)
            if self._used[kind] >= self.recovery.budget_per_kind.get(kind, 0):
                skipped.append(f"{action.value}: budget for {kind.value} used")
                budget_hit = True
                continue
            why_not = self._why_not(action, failure)
            if why_not:
                skipped.append(f"{action.value}: {why_not}")
                continue
            budget = self._out_of_budget()
            if budget:
                return self._escalate(budget, failure, exhausted=True)
            self._used[kind] += 1
            return self._apply(action, failure), action, ""
        reason = f"no recovery is left for {kind.value}"
        if skipped:
            reason += " (" + "; ".join(skipped) + ")"
        return self._escalate(reason, failure, exhausted=budget_hit)

    def _why_not(self, action: RecoveryAction, failure: Failure) -> str:
        """Why `action` cannot answer `failure` now ("" if it can)."""
        if (failure.kind, action) in self._spent:
            return "the server refused it"
        if action in (A.RETRY, A.WAIT):
            if not failure.retryable:
                return "the failure is the code's own"
            if failure.kind is FailureKind.CORRUPT_STATE and self.session_id:
                return "the session's state is gone; a fresh session is the caller's call"
            if failure.retry_after_ms / 1000 > self.recovery.max_wait_s:
                return f"retry_after_ms={failure.retry_after_ms} exceeds max_wait_s"
            self._wait_s = self._wait_for(failure)
            if self._wait_s >= self.remaining_s():
                return "the wait would outlast the time budget"
            return ""
        if action is A.FALLBACK:
            if self.session_id:
                return "a session is bound to its backend"
            if self.backend_chosen:
                return f"the caller chose backend {self.backend.value}"
            if self.backend is self.recovery.fallback_backend:
                return f"already on {self.backend.value}"
            fallback = self.recovery.fallback_backend
            if _signature(self.code, fallback, self.policy, self.limits) in self._failed:
                return f"this code already failed on {fallback.value}"
            return ""
        if action is A.RESIZE:
            if self.session_id:
                return "a session's limits are fixed"
            current, grown = self._resize_values(failure)
            if current is None:
                return "the current limit is unknown"
            if grown is None or grown <= current:
                return "the limit cannot grow further"
            if (
                _signature(self.code, self.backend, self.policy, self._grown(failure))
                in self._failed
            ):
                return "the code already failed with that limit"
            return ""
        if action is A.REPAIR:
            return "" if self.can_repair else "no repair function was given"
        return ""

    def _resize_values(self, failure: Failure) -> tuple[int | None, int | None]:
        name = RESIZABLE.get(failure.kind)
        if name is None:
            return None, None
        # The server reports the limit it applied; what we asked for may be higher if
        # the two disagree, and growing from the higher one never repeats a size.
        known: list[int] = []
        reported = failure.details.get("limit_value", "")
        if failure.details.get("limit") == name and reported.isdigit():
            known.append(int(reported))
        if self.limits is not None and getattr(self.limits, name) is not None:
            known.append(getattr(self.limits, name))
        if not known:
            return None, None
        current = max(known)
        grown = int(current * self.recovery.resize_factor)
        cap = self.recovery.resize_cap(name)
        return current, min(grown, cap) if cap is not None else grown

    def _grown(self, failure: Failure) -> Limits:
        _, grown = self._resize_values(failure)
        return (self.limits or Limits()).model_copy(update={RESIZABLE[failure.kind]: grown})

    def _apply(self, action: RecoveryAction, failure: Failure) -> Step:
        if action in (A.RETRY, A.WAIT):
            return Step("retry", failure, self._wait_s)  # as _why_not worked it out
        if action is A.FALLBACK:
            self._change = _Change(action, "backend", failure, self.backend, self.limits)
            self.backend = self.recovery.fallback_backend
            self._keep_key = False
            return Step("execute", failure)
        if action is A.RESIZE:
            name = RESIZABLE[failure.kind]
            self._change = _Change(action, f"limits.{name}", failure, self.backend, self.limits)
            self.limits = self._grown(failure)
            self._keep_key = False
            return Step("execute", failure)
        assert action is A.REPAIR
        return Step("repair", failure)

    def out_of_budget(self) -> Step:
        step, action, _ = self._escalate(self._out_of_budget(), self._last_failure, exhausted=True)
        if self.attempts:
            self.attempts[-1] = self.attempts[-1].model_copy(update={"action": action})
        return step

    # -- repair --------------------------------------------------------------------

    def repaired(self, step: Step, new_code: object, error: BaseException | None) -> Step:
        """Takes what the repair function returned (or raised) for `step`'s failure."""
        failure = step.failure
        assert failure is not None, "only a failure is repaired"
        problem = ""
        if error is not None:
            problem = f"the repair function raised {type(error).__name__}: {error}"
        elif not isinstance(new_code, str) or not new_code.strip():
            problem = f"the repair function returned {type(new_code).__name__}, not code"
        elif self.signature(code=new_code) in self._failed:
            problem = "the repair function returned code that already failed"
        if problem:
            self._annotate(problem)
            decided, action, _ = self._decide(failure)
            self._annotate(f"then {action.value}")
            return decided
        assert isinstance(new_code, str)
        self.code = new_code
        self._keep_key = False
        return Step("execute", failure)

    def _annotate(self, text: str) -> None:
        last = self.attempts[-1]
        note = f"{last.note}; {text}" if last.note else text
        self.attempts[-1] = last.model_copy(update={"note": note})

    # -- escalation ----------------------------------------------------------------

    def _escalate(
        self, reason: str, failure: Failure | None, *, exhausted: bool = False
    ) -> tuple[Step, RecoveryAction, str]:
        self._escalation_reason = reason
        self._budget_gone = exhausted
        if len(self.escalations) >= self.recovery.max_escalations:
            self.status = "escalated"  # it needs a person, and may ask no more
            return Step("done", failure), A.ABORT, f"{reason}; no escalations left"
        return Step("escalate", failure), A.ESCALATE, reason

    def escalation(self) -> Escalation:
        attempts = tuple(self.attempts)
        escalation = Escalation(
            reason=self._escalation_reason,
            code=self.code,
            failure=self._last_failure,
            attempts=attempts,
            budget_exhausted=self._budget_gone,
            summary=summarize(
                reason=self._escalation_reason,
                failure=self._last_failure,
                attempts=attempts,
                elapsed_s=self._clock() - self.started,
            ),
        )
        self.escalations.append(escalation)
        return escalation

    def resolve(self, resolution: Resolution) -> Step:
        """Takes the escalation handler's answer. An approval starts a fresh budget: a
        person has looked at it. Approving something that already failed aborts."""
        if isinstance(resolution, Abort):
            self.status = "aborted"
            return Step("done")
        if isinstance(resolution, ApproveCode):
            if self.signature(code=resolution.code) in self._failed:
                self.status = "aborted"
                self._annotate("the approved code already failed; not run again")
                return Step("done")
            self.code = resolution.code
        elif isinstance(resolution, ApprovePolicy):
            self.policy = resolution.policy
        else:
            raise TypeError(f"an escalation handler returned {resolution!r}, not a Resolution")
        self._annotate(f"approved: {resolution.kind} {resolution.note}".rstrip())
        self._keep_key = False
        self._used.clear()
        self._spent.clear()
        self._budget_start = self._clock()
        self._attempts_budget_from = len(self.attempts)
        return Step("execute")

    def outcome(self) -> Outcome:
        assert self.result is not None and self.status is not None
        return Outcome(
            status=self.status,
            result=self.result,
            code=self.code,
            attempts=tuple(self.attempts),
            escalations=tuple(self.escalations),
            elapsed_s=round(self._clock() - self.started, 4),
        )
