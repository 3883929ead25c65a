"""Shadow checking's bound (core/shadow.py): offering never waits and never runs anything
on the caller's path; a full queue drops; a rate of 0 offers nothing. The container runs
themselves are tested against a real engine in tests/backends/container/test_shadow.py."""

from __future__ import annotations

from typing import Any

from sandbox.backends.base import RunSpec
from sandbox.core.shadow import QUEUE_SIZE, Sample, ShadowChecker
from sandbox_client import Backend, ExecutionResult
from tests.conftest import limits


class NeverRun:
    """A container backend that fails the test if anything runs on it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the container backend was used ({name}) while offering")


def a_sample() -> Sample:
    return Sample(
        spec=RunSpec(code="print(1)", limits=limits()),
        monty=ExecutionResult(ok=True, backend=Backend.MONTY, stdout="1\n"),
        execution_id="exe_1",
        policy="p",
        keep_code=True,
    )


async def test_a_full_queue_drops_and_counts_it() -> None:
    outcomes: list[str] = []
    checker = ShadowChecker(NeverRun(), state_dir=None, count=outcomes.append)  # type: ignore[arg-type]
    queued = [checker.offer(a_sample(), 1.0) for _ in range(QUEUE_SIZE + 3)]
    assert queued == [True] * QUEUE_SIZE + [False] * 3
    assert outcomes == ["dropped"] * 3
    assert not checker.idle.is_set()


async def test_the_rate_decides_what_is_offered() -> None:
    draws = iter([0.05, 0.5, 0.95])
    checker = ShadowChecker(NeverRun(), state_dir=None, draw=lambda: next(draws))  # type: ignore[arg-type]
    assert [checker.offer(a_sample(), 0.5) for _ in range(3)] == [True, False, False]
    assert checker.offer(a_sample(), 0.0) is False  # off: not even a draw
    assert checker.queue.qsize() == 1
