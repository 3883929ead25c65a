"""The I/O twins of `run()`: they execute, sleep (through stamina), call the repair
function and the escalation handler, and do whatever RunState decides. Nothing here
decides anything, and what the twins share (settling an attempt, calling the repair
function) is written once."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import stamina

from ..protocol.models import ExecutionResult, Failure
from ._models import Escalation, Outcome, Resolution, raise_escalation
from ._state import Request, RunState, Step

# A repair function gets the code and why it failed, and returns new code (None: give
# up). With AsyncSandboxClient it may also be a coroutine function.
RepairFn = Callable[[str, Failure], str | None]
AsyncRepairFn = Callable[[str, Failure], str | Awaitable[str | None] | None]
EscalationHandler = Callable[[Escalation], Resolution]
AsyncEscalationHandler = Callable[[Escalation], Resolution | Awaitable[Resolution]]


# SandboxClient.execute / AsyncSandboxClient.execute (or run_tools with its tools bound),
# or a stand-in with their signature.
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


def _settle(state: RunState, request: Request, result: ExecutionResult) -> Step:
    step = state.record(request, result)
    if step.next == "retry":
        raise _Again(step)  # stamina backs off and opens the next attempt
    return step


def _repair_answer(
    repair: AsyncRepairFn | None, state: RunState, step: Step
) -> tuple[object, Exception | None]:
    """Calls the repair function for `step`'s failure: (its answer, None), or (None,
    what it raised). The answer may be an awaitable, for the async twin to await."""
    assert repair is not None and step.failure is not None
    try:
        return repair(state.code, step.failure), None
    except Exception as error:  # the repair function's problem: recorded, handled
        return None, error


def run_sync(
    execute: _Execute,
    state: RunState,
    *,
    repair: RepairFn | None,
    escalate: EscalationHandler | None,
) -> Outcome:
    handler = escalate or raise_escalation

    def attempt_until_settled() -> Step:
        try:
            for attempt in stamina.retry_context(on=_backoff_hook, **state.retry_window()):
                with attempt:
                    request = state.next_request()
                    if request is None:
                        return state.out_of_budget()
                    return _settle(state, request, execute(request.code, **request.options))
        except _Again:
            return state.retries_stopped()
        raise AssertionError("stamina yielded no attempt")

    step = attempt_until_settled()
    while step.next != "done":
        if step.next == "repair":
            step = state.repaired(step, *_repair_answer(repair, state, step))
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
) -> Outcome:
    handler = escalate or raise_escalation

    async def attempt_until_settled() -> Step:
        try:
            async for attempt in stamina.retry_context(on=_backoff_hook, **state.retry_window()):
                with attempt:
                    request = state.next_request()
                    if request is None:
                        return state.out_of_budget()
                    result = await execute(request.code, **request.options)
                    return _settle(state, request, result)
        except _Again:
            return state.retries_stopped()
        raise AssertionError("stamina yielded no attempt")

    step = await attempt_until_settled()
    while step.next != "done":
        if step.next == "repair":
            step = state.repaired(step, *await _repair_answer_async(repair, state, step))
        elif step.next == "escalate":
            step = state.resolve(await _maybe_await(handler(state.escalation())))
        else:
            step = await attempt_until_settled()
    return state.outcome()


async def _repair_answer_async(
    repair: AsyncRepairFn | None, state: RunState, step: Step
) -> tuple[object, Exception | None]:
    answer, error = _repair_answer(repair, state, step)
    if error is not None:
        return None, error
    try:
        return await _maybe_await(answer), None
    except Exception as raised:  # a coroutine repair function raises when awaited
        return None, raised


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
