"""The PostgreSQL journal's own rules, on a real cluster: versioned migrations, leases
(heartbeat, take-over only after a lapse, release), fencing on the generation, wake-ups
by LISTEN/NOTIFY, and an unreachable database answered at once with Unavailable. Two
stores on one database stand for two replicas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sandbox.core.request import Request
from sandbox.durable.durability import Durability
from sandbox.durable.journal import Entry, Pinned, SharedJournalStore, ToolAnswer
from sandbox.durable.pg_schema import VERSION
from sandbox.durable.postgres import PostgresJournal
from sandbox.errors import ConfigError, LeaseLost, Unavailable
from sandbox_client.protocol.models import ExecutionResult
from tests.postgres import free_port

PINNED = Pinned(time_iso="2025-01-01T00:00:00", seed=7)
ANSWER = ToolAnswer(seq=1, name="f", args_json="[]", kwargs_json="{}", answer_json='{"value": 1}')


@pytest.fixture
def url(postgres: Any) -> str:
    return str(postgres.database())


@pytest.fixture
def stores(url: str) -> Iterator[list[PostgresJournal]]:
    """Two replicas' stores on one database, with a short lease."""
    opened = [PostgresJournal(url, lease_s=1.0) for _ in range(2)]
    yield opened
    for s in opened:
        s.close()


def fresh(owner: str, key: str = "k") -> Entry:
    return Entry.running("t", key, digest="d", owner=owner, pinned=PINNED, now=1.0)


def lapse(url: str, key: str = "k") -> None:
    """What a paused replica's lease comes to: its deadline passed."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE executions SET lease_until = now() - interval '1 s' WHERE key = %s", (key,)
        )


def test_is_a_shared_store_and_the_schema_is_versioned(url: str) -> None:
    first = PostgresJournal(url)
    second = PostgresJournal(url)  # finds the schema in place and applies nothing
    assert isinstance(first, SharedJournalStore)
    with psycopg.connect(url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM sandbox_schema_version")]
    assert versions == list(range(1, VERSION + 1))
    first.close()
    second.close()


def test_a_database_of_a_newer_schema_is_refused(url: str) -> None:
    PostgresJournal(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO sandbox_schema_version (version) VALUES (%s)", (VERSION + 1,))
    from sandbox.durable.pg_schema import migrate

    with psycopg.connect(url, autocommit=True) as conn, pytest.raises(ConfigError, match="newer"):
        migrate(conn)


def test_a_live_lease_is_not_taken_over_and_the_heartbeat_keeps_it(
    stores: list[PostgresJournal],
) -> None:
    a, b = stores
    assert a.claim(fresh("A"))[1]
    time.sleep(2.5)  # over two lease periods: only the heartbeat keeps it live
    assert b.try_take_over("t", "k", owner="B", now=2.0) is None
    a.record_answer("t", "k", ANSWER, now=3.0)  # A still holds it


def test_a_lapsed_lease_is_taken_over_and_the_old_holder_is_fenced(
    stores: list[PostgresJournal], url: str
) -> None:
    a, b = stores
    a.claim(fresh("A"))
    a.record_answer("t", "k", ANSWER, now=2.0)
    lapse(url)
    taken = b.try_take_over("t", "k", owner="B", now=3.0)
    assert taken is not None and taken.owner == "B" and taken.answers == {1: ANSWER}
    b.finish("t", "k", result_json='"B"', now=4.0)
    with pytest.raises(LeaseLost):
        a.finish("t", "k", result_json='"A"', now=5.0)
    with pytest.raises(LeaseLost):
        a.record_answer("t", "k", ANSWER, now=5.0)
    a.forget("t", "k")  # not A's any more: a no-op
    done = b.get("t", "k")
    assert done is not None and done.state == "done" and done.result_json == '"B"'


def test_a_fenced_write_changes_nothing_even_before_the_successor_writes(
    stores: list[PostgresJournal], url: str
) -> None:
    a, b = stores
    a.claim(fresh("A"))
    lapse(url)
    assert b.try_take_over("t", "k", owner="B", now=3.0) is not None
    with pytest.raises(LeaseLost):
        a.record_answer("t", "k", ANSWER, now=4.0)
    entry = b.get("t", "k")
    assert entry is not None and entry.answers == {} and entry.state == "running"


def test_a_released_entry_is_taken_over_at_once(stores: list[PostgresJournal]) -> None:
    a, b = stores
    a.claim(fresh("A"))
    a.release("t", "k")
    assert b.try_take_over("t", "k", owner="B", now=2.0) is not None


async def test_a_waiter_is_woken_by_another_replicas_finish(
    stores: list[PostgresJournal],
) -> None:
    a, b = stores
    a.claim(fresh("A"))
    watch = b.watch("t", "k")
    started = time.monotonic()
    await asyncio.sleep(0.2)
    await asyncio.to_thread(a.finish, "t", "k", result_json="1", now=2.0)
    await watch.wait(30)
    watch.close()
    assert time.monotonic() - started < 5  # woken, not timed out


def test_an_unreachable_database_is_unavailable_at_once() -> None:
    store = PostgresJournal(f"postgresql://nobody@127.0.0.1:{free_port()}/x", connect_timeout_s=1)
    try:
        assert not store.reachable()
        started = time.monotonic()
        with pytest.raises(Unavailable):
            store.claim(fresh("A"))
        assert time.monotonic() - started < 0.5
    finally:
        store.close()


async def test_one_key_sent_to_two_replicas_at_once_runs_once(url: str) -> None:
    replicas = [
        Durability(PostgresJournal(url, lease_s=2), checkpoint_key=b"k", retention_s=60)
        for _ in range(2)
    ]
    runs: list[str] = []

    async def run(entry: Entry) -> ExecutionResult:
        runs.append(entry.owner)
        await asyncio.sleep(0.3)
        return ExecutionResult(ok=True, result_json=str(len(runs)))

    request = Request(code="1", idempotency_key="k")
    results = await asyncio.gather(*(replicas[i % 2].once(request, run) for i in range(20)))
    assert len(runs) == 1
    assert {r.result_json for r in results} == {"1"}
    assert sum(not r.replayed for r in results) == 1
    for d in replicas:
        await d.stop()
