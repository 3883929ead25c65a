"""map_monty_outcome's TOOL_ERROR case: an exception the host injected as a tool's answer
that the code did not catch, and the cases that only look like one."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pydantic_monty as pm
import pytest

from sandbox.backends.monty.outcome import RunSignals, map_monty_outcome
from sandbox.backends.tools import InjectedToolError
from sandbox_client import FailureKind, SuggestedAction
from tests.conftest import limits

LIMITS = limits(wall_time_ms=5000, memory_bytes=64 << 20, pids=16, disk_bytes=1 << 20)


@pytest.fixture(scope="module")
def pool() -> Iterator[pm.Monty]:
    with pm.Monty(min_processes=1) as monty:
        yield monty
    gc.collect()


def error_of(pool: pm.Monty, code: str) -> pm.MontyError:
    with pool.checkout() as session:
        try:
            session.feed_run(code)
        except pm.MontyError as exc:
            return exc
    raise AssertionError("the code did not fail")


def injected(kind: str = "", message: str = "upstream said no") -> InjectedToolError:
    return InjectedToolError(
        seq=2, tool="fetch", exception_type="ValueError", message=message, kind=kind
    )


def test_an_uncaught_injected_error_is_tool_error(pool: pm.Monty) -> None:
    exc = error_of(pool, "x = 1\nraise ValueError('upstream said no')")
    failure = map_monty_outcome(exc, RunSignals(limits=LIMITS, tool_errors=[injected()]))
    assert failure is not None and failure.kind is FailureKind.TOOL_ERROR
    assert failure.details == {"tool": "fetch", "call_id": "2"}
    # Worded by outcome_parts.tool_failure, as the container classifier words it.
    assert failure.message == (
        "tool 'fetch' raised ValueError: upstream said no "
        "(line 2: raise ValueError('upstream said no'))"
    )
    assert failure.exception_type == "ValueError"
    assert failure.line == 2 and not failure.retryable
    assert failure.suggested_action is SuggestedAction.REPAIR


def test_a_tool_error_takes_the_retry_advice_of_the_tools_kind(pool: pm.Monty) -> None:
    exc = error_of(pool, "raise ValueError('upstream said no')")
    signals = RunSignals(limits=LIMITS, tool_errors=[injected(kind="INFRA_UNAVAILABLE")])
    failure = map_monty_outcome(exc, signals)
    assert failure is not None and failure.kind is FailureKind.TOOL_ERROR
    assert failure.retryable and failure.suggested_action is SuggestedAction.RETRY
    assert failure.details["tool_kind"] == "INFRA_UNAVAILABLE"


@pytest.mark.parametrize(
    "code",
    [
        "raise ValueError('something else')",  # the code's own error, after a caught one
        "raise KeyError('upstream said no')",  # same text, another type
    ],
)
def test_the_codes_own_errors_stay_runtime_errors(pool: pm.Monty, code: str) -> None:
    exc = error_of(pool, code)
    failure = map_monty_outcome(exc, RunSignals(limits=LIMITS, tool_errors=[injected()]))
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR


def test_without_tool_answers_nothing_is_tool_error(pool: pm.Monty) -> None:
    exc = error_of(pool, "raise ValueError('upstream said no')")
    failure = map_monty_outcome(exc, RunSignals(limits=LIMITS))
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR
