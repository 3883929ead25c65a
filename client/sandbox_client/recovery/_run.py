"""The I/O twins of `run()`: they execute, sleep, call the repair function and the
escalation handler, and do whatever RunState decides. Nothing here decides anything, and
what the twins share (calling the repair function, telling of a retry) is written once.

Retries are logged through `logging` ("sandbox_client.recovery", INFO), silent unless the
application configures logging; every attempt is also in the Outcome. (stamina's retry
loop announced each retry through its global hooks, on the user's console by default,
and could sleep past the run's time budget.)"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..protocol.models import ExecutionResult, Failure
from ._models import Escalation, Outcome, Resolution, raise_escalation
from ._state import RunState, Step

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


log = logging.getLogger("sandbox_client.recovery")


def _told(state: RunState, step: Step) -> float:
    """Logs a retry about to happen; its sleep."""
    failure = step.failure
    log.info(
        "retrying after %s in %.2f s (attempt %d)",
        failure.kind.value if failure is not None else "a transport error",
        step.backoff,
        len(state.attempts) + 1,
    )
    return step.backoff


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
        while (request := state.next_request()) is not None:
            step = state.record(request, execute(request.code, **request.options))
            if step.next != "retry":
                return step
            time.sleep(_told(state, step))
        return state.out_of_budget()

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
        while (request := state.next_request()) is not None:
            result = await execute(request.code, **request.options)
            step = state.record(request, result)
            if step.next != "retry":
                return step
            await asyncio.sleep(_told(state, step))
        return state.out_of_budget()

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
