"""A plain keyed execution's record is written just after its reply, by the journal's
writer thread: the reply does not wait for the store, a repeat meanwhile is answered
from memory, and stop() waits until every record is in the store."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sandbox.core.request import Request
from sandbox.durable.durability import Durability
from sandbox.durable.journal import Entry, SqliteJournal
from sandbox_client.protocol.models import ExecutionResult, Usage

RESULT = ExecutionResult(ok=True, execution_id="exe_1", result_json="2", usage=Usage(wall_ms=1))


class SlowStore(SqliteJournal):
    """The SQLite store, its one-write record held until `release` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()

    def record_done(self, entry: Entry, *, result_json: str, now: float, mac: bytes = b"") -> None:
        self.release.wait(10)
        super().record_done(entry, result_json=result_json, now=now, mac=mac)


async def test_the_reply_does_not_wait_for_the_write_and_a_repeat_is_replayed(
    tmp_path: Path,
) -> None:
    store = SlowStore(tmp_path / "journal.sqlite3")
    journal = Durability(store, checkpoint_key=b"k" * 32, retention_s=3600)
    runs = 0

    async def run(_entry: Entry) -> ExecutionResult:
        nonlocal runs
        runs += 1
        return RESULT

    request = Request(code="1+1", idempotency_key="k-behind")
    started = time.monotonic()
    first = await journal.once(request, run)
    assert time.monotonic() - started < 5  # not held for the store
    assert first.ok and not first.replayed
    assert store.get("local", "k-behind") is None  # not written yet
    again = await journal.once(request, run)
    assert again.replayed and again.execution_id == "exe_1" and runs == 1
    store.release.set()
    await journal.flush()
    entry = store.get("local", "k-behind")
    assert entry is not None and entry.state == "done"
    # From the store now, as after a restart: still replayed, still not run.
    assert (await journal.once(request, run)).replayed and runs == 1
    await journal.stop()


async def test_stop_writes_every_pending_record(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    store = SlowStore(path)
    journal = Durability(store, checkpoint_key=b"k" * 32, retention_s=3600)

    async def run(_entry: Entry) -> ExecutionResult:
        return RESULT

    for i in range(50):
        await journal.once(Request(code="1+1", idempotency_key=f"k-{i}"), run)
    threading.Timer(0.2, store.release.set).start()
    await journal.stop()
    reopened = SqliteJournal(path)
    assert all(reopened.get("local", f"k-{i}") is not None for i in range(50))
    reopened.close()
