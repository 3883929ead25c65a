"""The container backend's admission: a full queue is back-pressure that says how long to
wait, from the rate slots have been coming free (no engine needed)."""

from __future__ import annotations

import asyncio

import pytest

from sandbox.backends.container.backend import _Admission, _Busy
from sandbox.backends.container.outcome import INFRA_RETRY_AFTER_MS


async def hold(admission: _Admission, seconds: float) -> None:
    async with admission.slot():
        await asyncio.sleep(seconds)


async def refusal(admission: _Admission) -> _Busy:
    """Fills the slot and the queue (two), then asks once more: the refusal."""
    busy = [asyncio.create_task(hold(admission, 0.3))]
    busy += [asyncio.create_task(hold(admission, 0)) for _ in range(2)]
    await asyncio.sleep(0.05)
    try:
        with pytest.raises(_Busy) as refused:
            async with admission.slot():
                pass
    finally:
        await asyncio.gather(*busy)
    return refused.value


async def test_before_any_slot_came_free_a_refusal_asks_for_the_default_wait() -> None:
    assert (await refusal(_Admission(limit=1, queue=2, timeout_s=30))).retry_after_ms == (
        INFRA_RETRY_AFTER_MS
    )


async def test_a_refusal_asks_for_the_time_the_queue_ahead_takes_to_drain() -> None:
    admission = _Admission(limit=1, queue=2, timeout_s=30)
    for _ in range(4):  # a slot comes free every 0.5 s
        await hold(admission, 0.5)
    # Two queued ahead, and this one: 3 slots at 2 a second.
    assert 1300 <= (await refusal(admission)).retry_after_ms <= 1700
