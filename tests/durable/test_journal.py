"""The journal stores (SQLite, and PostgreSQL on a real cluster) and Durability.once on
their own, with a fake clock and a `run` that counts: no server, no backend. Every test
runs against both stores."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox.core.request import Request
from sandbox.durable.durability import Durability
from sandbox.durable.journal import (
    Checkpoint,
    Entry,
    JournalStore,
    Pinned,
    SqliteJournal,
    ToolAnswer,
)
from sandbox.errors import InvalidRequest
from sandbox_client.protocol.models import ExecutionResult, Failure, FailureKind

PINNED = Pinned(time_iso="2025-01-01T00:00:00", seed=7)


Opener = Callable[[], JournalStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the store under test (again: the same journal)."""
    opened: list[JournalStore] = []
    if request.param == "sqlite":

        def open_store() -> JournalStore:
            opened.append(SqliteJournal(tmp_path / "journal.sqlite3"))
            return opened[-1]
    else:
        from sandbox.durable.postgres import PostgresJournal

        url = request.getfixturevalue("postgres").database()

        def open_store() -> JournalStore:
            opened.append(PostgresJournal(url, lease_s=5))
            return opened[-1]

    yield open_store
    for s in opened:
        s.close()


def store(opener: Opener) -> JournalStore:
    return opener()


def test_claim_inserts_once_and_then_finds(opener: Opener) -> None:
    s = store(opener)
    _, created = s.claim(Entry.running("t", "k", digest="d", owner="o1", pinned=PINNED, now=1.0))
    again, created_again = s.claim(
        Entry.running("t", "k", digest="d", owner="o2", pinned=PINNED, now=2.0)
    )
    assert created and not created_again
    assert again.owner == "o1" and again.state == "running" and again.pinned == PINNED


def test_answers_and_checkpoints_survive_a_reopen_and_finish_drops_them(opener: Opener) -> None:
    s = store(opener)
    s.claim(Entry.running("t", "k", digest="d", owner="o", pinned=PINNED, now=1.0))
    answer = ToolAnswer(
        seq=1, name="f", args_json="[]", kwargs_json="{}", answer_json='{"value": 1}'
    )
    s.record_answer("t", "k", answer, now=2.0)
    s.save_checkpoint(
        "t", "k", Checkpoint(seq=1, blob=b"x", mac=b"m", output={"stdout": "hi"}), now=3.0
    )
    s.close()
    reopened = store(opener)
    reopened.take_over("t", "k", owner="o", now=3.5)  # as Durability does on a restart
    entry = reopened.get("t", "k")
    assert entry is not None and entry.state == "suspended"
    assert entry.answers == {1: answer}
    assert entry.checkpoint is not None and entry.checkpoint.output == {"stdout": "hi"}
    reopened.finish("t", "k", result_json="{}", now=4.0)
    done = reopened.get("t", "k")
    assert (
        done is not None and done.state == "done" and not done.answers and done.checkpoint is None
    )


def test_tenants_do_not_share_keys(opener: Opener) -> None:
    s = store(opener)
    s.claim(Entry.running("a", "k", digest="d", owner="o", pinned=PINNED, now=1.0))
    assert s.get("b", "k") is None


def test_purge_deletes_only_what_is_older_than_retention(opener: Opener) -> None:
    s = store(opener)
    s.claim(Entry.running("t", "old", digest="d", owner="o", pinned=PINNED, now=1.0))
    s.claim(Entry.running("t", "new", digest="d", owner="o", pinned=PINNED, now=100.0))
    assert s.purge(before=50.0) == 1
    assert s.get("t", "old") is None and s.get("t", "new") is not None


def _durability(opener: Opener) -> Durability:
    return Durability(store(opener), checkpoint_key=b"k", retention_s=60, clock=lambda: 1.0)


def _ok(n: int) -> ExecutionResult:
    return ExecutionResult(ok=True, result_json=str(n))


async def test_once_runs_a_key_once_and_replays_it(opener: Opener) -> None:
    durability = _durability(opener)
    runs: list[Entry] = []

    async def run(entry: Entry) -> ExecutionResult:
        runs.append(entry)
        await asyncio.sleep(0.01)
        return _ok(len(runs))

    request = Request(code="1", idempotency_key="k")
    results = await asyncio.gather(*(durability.once(request, run) for _ in range(10)))
    assert len(runs) == 1
    assert [r.result for r in results].count(1) == 10
    assert sum(r.replayed for r in results) == 9
    await durability.stop()


async def test_a_different_request_under_a_used_key_is_invalid(opener: Opener) -> None:
    durability = _durability(opener)

    async def run(entry: Entry) -> ExecutionResult:
        return _ok(1)

    await durability.once(Request(code="1", idempotency_key="k"), run)
    with pytest.raises(InvalidRequest) as refused:
        await durability.once(Request(code="2", idempotency_key="k"), run)
    assert refused.value.field == "idempotency_key"
    await durability.stop()


async def test_a_retryable_failure_is_forgotten_so_the_retry_runs(opener: Opener) -> None:
    durability = _durability(opener)
    answers = [
        ExecutionResult.failed(Failure.of(FailureKind.SANDBOX_CRASH, "lost")),
        _ok(2),
    ]

    async def run(entry: Entry) -> ExecutionResult:
        return answers.pop(0)

    request = Request(code="1", idempotency_key="k")
    first = await durability.once(request, run)
    second = await durability.once(request, run)
    assert first.failure is not None and second.ok and not second.replayed
    await durability.stop()
