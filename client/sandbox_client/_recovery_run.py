"""The I/O twins of `run()`: they execute, sleep (through stamina), call the repair
function and the escalation handler, and do whatever RunState decides. Nothing here
decides anything."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import stamina

from ._recovery import (
    Escalation,
    Outcome,
    RecoveryPolicy,
    Resolution,
    raise_escalation,
)
from ._recovery_state import RunState, Step
from .protocol.models import Backend, ExecutionResult, Failure, Limits

# A repair function gets the code and why it failed, and returns new code (None: give
# up). With AsyncSandboxClient it may also be a coroutine function.
RepairFn = Callable[[str, Failure], str | None]
AsyncRepairFn = Callable[[str, Failure], str | Awaitable[str | None] | None]
EscalationHandler = Callable[[Escalation], Resolution]
AsyncEscalationHandler = Callable[[Escalation], Resolution | Awaitable[Resolution]]


# SandboxClient.execute / AsyncSandboxClient.execute, or a stand-in with their signature.
_Execute = Callable[..., ExecutionResult]
_AsyncExecute = Callable[..., Awaitable[ExecutionResult]]


class _Again(Exception):
    """Raised inside a stamina attempt to ask for the same request again."""

    def __init__(self, step: Step) -> None:
        super().__init__(step.next)
        self.step = step


def _backoff_hook(exc: Exception) -> bool | float:
    # Only our own signal is retried; anything else is a bug and propagates.
    return exc.step.backoff if isinstance(exc, _Again) else False


def new_state(
    code: str,
    *,
    recovery: RecoveryPolicy | None,
    backend: Backend | str,
    policy: str,
    limits: Limits | None,
    session_id: str,
    idempotency_key: str | None,
    timeout_s: float | None,
    can_repair: bool,
) -> RunState:
    return RunState(
        code,
        recovery=recovery or RecoveryPolicy(),
        backend=Backend(backend),
        policy=policy,
        limits=limits,
        session_id=session_id,
        idempotency_key=idempotency_key,
        timeout_s=timeout_s,
        can_repair=can_repair,
    )


def run_sync(
    execute: _Execute,
    state: RunState,
    *,
    repair: RepairFn | None,
    escalate: EscalationHandler | None,
    inputs: Mapping[str, Any] | None,
    stdin: str,
) -> Outcome:
    handler = escalate or raise_escalation

    def attempt_until_settled() -> Step:
        try:
            for attempt in stamina.retry_context(on=_backoff_hook, **state.retry_window()):
                with attempt:
                    request = state.next_request()
                    if request is None:
                        return state.out_of_budget()
                    started = state.now()
                    result = execute(
                        request.code, **request.kwargs(inputs, stdin, state.session_id)
                    )
                    step = state.record(request, result, started)
                    if step.next == "retry":
                        raise _Again(step)
                    return step
        except _Again:
            return state.retries_stopped()
        raise AssertionError("stamina yielded no attempt")

    step = attempt_until_settled()
    while step.next != "done":
        if step.next == "repair":
            failure = step.failure
            assert failure is not None and repair is not None
            try:
                new_code: object = repair(state.code, failure)
            except Exception as error:  # the repair function's problem: recorded, handled
                step = state.repaired(failure, None, error)
            else:
                step = state.repaired(failure, new_code, None)
        elif step.next == "escalate":
            step = state.resolve(handler(state.escalation()))
        else:
            step = attempt_until_settled()
    return state.outcome()


async def run_async(
    execute: _AsyncExecute,
    state: RunState,
    *,
    repair: AsyncRepairFn | None,
    escalate: AsyncEscalationHandler | None,
    inputs: Mapping[str, Any] | None,
    stdin: str,
) -> Outcome:
    handler = escalate or raise_escalation

    async def attempt_until_settled() -> Step:
        try:
            async for attempt in stamina.retry_context(on=_backoff_hook, **state.retry_window()):
                with attempt:
                    request = state.next_request()
                    if request is None:
                        return state.out_of_budget()
                    started = state.now()
                    result = await execute(
                        request.code, **request.kwargs(inputs, stdin, state.session_id)
                    )
                    step = state.record(request, result, started)
                    if step.next == "retry":
                        raise _Again(step)
                    return step
        except _Again:
            return state.retries_stopped()
        raise AssertionError("stamina yielded no attempt")

    step = await attempt_until_settled()
    while step.next != "done":
        if step.next == "repair":
            failure = step.failure
            assert failure is not None and repair is not None
            try:
                new_code: object = await _maybe_await(repair(state.code, failure))
            except Exception as error:
                step = state.repaired(failure, None, error)
            else:
                step = state.repaired(failure, new_code, None)
        elif step.next == "escalate":
            step = state.resolve(await _maybe_await(handler(state.escalation())))
        else:
            step = await attempt_until_settled()
    return state.outcome()


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
