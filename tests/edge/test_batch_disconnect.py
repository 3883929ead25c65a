"""A client that goes away halfway through a batch: the items in flight are cancelled
and none is left running, and the same batch resent under the same keys gets the items
that had finished from the journal (same execution ids, `replayed`), not run again."""

from __future__ import annotations

import asyncio
import time

from sandbox_client import SandboxClient
from sandbox_client._batch import BatchItem
from tests.conftest import ServerThread, running_server

COUNT = 24
LONG_S = 8  # within the default policy's wall time, far longer than the checks below


def code(i: int) -> str:
    # Every fourth item sleeps long; the others finish quickly, so some are answered
    # before the client leaves and some are still in flight.
    seconds = LONG_S if i % 4 == 3 else 0.05
    return f"import time\ntime.sleep({seconds})\n{i}"


def items() -> list[BatchItem]:
    return [
        {"code": code(i), "backend": "monty", "idempotency_key": f"disconnect-{i}"}
        for i in range(COUNT)
    ]


def running_items(server: ServerThread) -> int:
    async def count() -> int:
        return sum(
            1
            for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__qualname__", "") == "_Batch._item"
        )

    return server.call(count())


def test_disconnect_halfway_cancels_and_resend_replays_the_finished() -> None:
    with running_server(batch={"window": 4}, monty={"min_workers": 4, "max_workers": 4}) as server:
        client = SandboxClient(server.address, timeout_s=60)
        first: dict[int, str] = {}
        for index, result in client.as_completed(items(), concurrency=4):
            assert result.ok and not result.replayed, result.failure
            first[index] = result.execution_id
            if len(first) == 3:
                break  # the client goes away with items in flight (the long sleepers)
        deadline = time.monotonic() + 10
        while running_items(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running_items(server) == 0
        # The workers are free again: four quick executions at once finish promptly.
        started = time.monotonic()
        assert all(r.ok for r in client.map(["1"] * 4, backend="monty"))
        assert time.monotonic() - started < LONG_S / 3

        # The same batch again, long sleepers left out: the finished ones are replayed.
        again = [(i, item) for i, item in enumerate(items()) if i % 4 != 3]
        replayed: dict[int, str] = {}
        fresh = 0
        for (i, _), result in zip(again, client.map([item for _, item in again]), strict=True):
            assert result.ok, result.failure
            assert result.result == i
            if result.replayed:
                replayed[i] = result.execution_id
            else:
                fresh += 1
        client.close()
    # Every item the client saw finish is replayed with its own execution id (an item
    # that finished after the client stopped reading is replayed too: it was recorded).
    assert first.items() <= replayed.items()
    assert fresh + len(replayed) == len(again)
