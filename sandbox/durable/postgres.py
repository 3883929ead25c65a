"""The journal several replicas share: PostgreSQL through psycopg 3 and psycopg_pool.

An entry a replica runs is leased to it (journal.SharedJournalStore): `owner`, a
`lease_until` in the database's clock (so replicas' clocks need not agree) that a
heartbeat thread renews every third of `lease_s`, and a `generation` bumped by every
take-over. This store remembers the generation it holds per entry and fences every write
on it (`WHERE generation = held`): a replica that was paused past its lease finds the
row moved on and raises LeaseLost instead of overwriting its successor.

Waiters for an entry another replica runs are woken by LISTEN/NOTIFY (one listener
connection, one channel; the payload is a hash of (tenant, key)); a notification is sent
in the transaction that finishes, forgets or releases an entry, so it arrives only once
the change is visible.

The store is synchronous, like SqliteJournal (the JournalStore protocol is, and its calls
are short round trips on a local network). So that an unreachable database never holds
the event loop for a connection timeout per call, a probe thread checks it every second
and, while it is down, every call fails at once with Unavailable (INFRA_UNAVAILABLE,
retryable); nothing runs unjournaled, because a keyed run starts only after its claim.
The schema is created and migrated at start-up (pg_schema.py), or by the probe once the
database answers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg_pool import ConnectionPool, PoolTimeout

from sandbox.durable.journal import (
    Checkpoint,
    Entry,
    Pinned,
    ToolAnswer,
    answer_row,
    done_row,
)
from sandbox.durable.pg_schema import migrate
from sandbox.errors import LeaseLost, Unavailable

log = structlog.get_logger("sandbox.durable")

CHANNEL = "sandbox_journal"
_T = TypeVar("_T")
_Conn = psycopg.Connection[tuple[Any, ...]]
_Scope = tuple[str, str]

_ENTRY_COLUMNS = (
    "digest, state, owner, pinned_time, pinned_seed, result_json, checkpoint_seq,"
    " checkpoint, checkpoint_mac, checkpoint_output, created_at, updated_at, entry_mac,"
    " result_mac"
)


def wake_token(tenant: str, key: str) -> str:
    """The NOTIFY payload naming one entry (a key may be longer than a payload may)."""
    data = tenant.encode("utf-8", "surrogatepass") + b"\0" + key.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:32]


class _Watch:
    def __init__(self, store: PostgresJournal, token: str) -> None:
        self._store = store
        self.token = token
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def wake(self) -> None:  # from the listener thread
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout_s)
        self._event.clear()

    def close(self) -> None:
        self._store._unwatch(self)


class PostgresJournal:
    """SharedJournalStore in PostgreSQL; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        lease_s: float = 10.0,
        probe_s: float = 1.0,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.lease_s = lease_s
        self._url = url
        self._probe_s = probe_s
        self._connect_timeout_s = connect_timeout_s
        self._held: dict[_Scope, int] = {}
        # More leases the heartbeat renews (pg_quotas.py's slots), each a call of its own.
        self.renewals: list[Callable[[], None]] = []
        self._watches: dict[str, set[_Watch]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reachable = False
        self._migrated = False
        self._pool: ConnectionPool[_Conn] = ConnectionPool(
            url,
            min_size=1,
            max_size=8,
            timeout=connect_timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout_s))},
            open=False,
            name="sandbox-journal",
        )
        self._pool.open(wait=False)
        self._probe()
        self._threads = [
            threading.Thread(target=target, name=name, daemon=True)
            for target, name in (
                (self._probe_forever, "journal-probe"),
                (self._heartbeat_forever, "journal-heartbeat"),
                (self._listen_forever, "journal-listen"),
            )
        ]
        for thread in self._threads:
            thread.start()

    # -- health --------------------------------------------------------------------------

    def reachable(self) -> bool:
        return self._reachable

    def _probe(self) -> None:
        try:
            with self._pool.connection(timeout=self._connect_timeout_s) as conn:
                if not self._migrated:
                    found = migrate(conn)
                    self._migrated = True
                    log.info("journal schema ready", store="postgresql", found_version=found)
                conn.execute("SELECT 1")
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if self._reachable:
                log.warning("the journal is unreachable", error=type(exc).__name__)
            self._reachable = False
            return
        if not self._reachable:
            log.info("the journal is reachable", store="postgresql")
        self._reachable = True

    def _probe_forever(self) -> None:
        while not self._closed.wait(self._probe_s):
            self._probe()

    def call(self, work: Callable[[_Conn], _T]) -> _T:
        """`work` on a pooled connection (autocommit; `conn.transaction()` for more than
        one statement); Unavailable while the database does not answer."""
        if not self._reachable:
            raise Unavailable(
                "the journal (PostgreSQL) is unreachable, so nothing keyed can run now; "
                "retry later under the same idempotency key"
            )
        try:
            with self._pool.connection() as conn:
                return work(conn)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self._reachable = False
            log.warning("the journal is unreachable", error=type(exc).__name__)
            raise Unavailable(
                "the journal (PostgreSQL) stopped answering; retry later under the same "
                "idempotency key"
            ) from exc

    # -- leases ----------------------------------------------------------------------------

    def _generation(self, tenant: str, key: str) -> int:
        with self._lock:
            generation = self._held.get((tenant, key))
        if generation is None:
            raise LeaseLost(
                "this replica no longer holds this execution (its lease lapsed and another "
                "replica may have taken it over); retry under the same idempotency key"
            )
        return generation

    def _drop(self, tenant: str, key: str, generation: int | None = None) -> None:
        with self._lock:
            if generation is None or self._held.get((tenant, key)) == generation:
                self._held.pop((tenant, key), None)

    def _lost(self, tenant: str, key: str, generation: int) -> LeaseLost:
        self._drop(tenant, key, generation)
        log.warning("lease lost: another replica took the execution over", tenant=tenant)
        return LeaseLost(
            "another replica took this execution over after this replica's lease lapsed; "
            "nothing of this attempt was recorded, and a retry under the same idempotency "
            "key gets that replica's outcome"
        )

    def _heartbeat_forever(self) -> None:
        while not self._closed.wait(self.lease_s / 3):
            for renew in list(self.renewals):
                try:
                    renew()
                except Exception as exc:  # unreachable: those leases lapse too
                    log.warning("lease renewal failed", error=type(exc).__name__)
            with self._lock:
                held = dict(self._held)
            if not held:
                continue
            try:
                kept = self._renew(held)
            except Exception as exc:  # unreachable: the leases lapse, as they should
                log.warning("lease renewal failed", error=type(exc).__name__)
                continue
            for (tenant, key), generation in held.items():
                if (tenant, key) not in kept:
                    self._drop(tenant, key, generation)

    def _renew(self, held: dict[_Scope, int]) -> set[_Scope]:
        tenants = [tenant for tenant, _ in held]
        keys = [key for _, key in held]
        generations = list(held.values())

        def renew(conn: _Conn) -> set[_Scope]:
            rows = conn.execute(
                "UPDATE executions AS e SET lease_until = now() + make_interval(secs => %s)"
                " FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS h(tenant, key, generation)"
                " WHERE e.tenant = h.tenant AND e.key = h.key AND e.generation = h.generation"
                " AND e.state <> 'done' RETURNING e.tenant, e.key",
                (self.lease_s, tenants, keys, generations),
            ).fetchall()
            return {(str(t), str(k)) for t, k in rows}

        return self.call(renew)

    # -- wake-ups --------------------------------------------------------------------------

    def watch(self, tenant: str, key: str) -> _Watch:
        watch = _Watch(self, wake_token(tenant, key))
        with self._lock:
            self._watches.setdefault(watch.token, set()).add(watch)
        return watch

    def _unwatch(self, watch: _Watch) -> None:
        with self._lock:
            waiting = self._watches.get(watch.token)
            if waiting is not None:
                waiting.discard(watch)
                if not waiting:
                    del self._watches[watch.token]

    def _wake(self, token: str | None) -> None:
        with self._lock:
            if token is None:
                woken = [w for waiting in self._watches.values() for w in waiting]
            else:
                woken = list(self._watches.get(token, ()))
        for watch in woken:
            watch.wake()

    def _listen_forever(self) -> None:
        while not self._closed.is_set():
            try:
                with psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=max(1, round(self._connect_timeout_s)),
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._wake(None)  # whatever was sent while not listening
                    while not self._closed.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            self._wake(notice.payload)
            except psycopg.Error:
                self._wake(None)
                self._closed.wait(self._probe_s)

    # -- replicas ----------------------------------------------------------------------------

    def register_replica(self, tag: str, address: str) -> None:
        self.call(
            lambda conn: conn.execute(
                "INSERT INTO replicas (tag, address) VALUES (%s, %s) ON CONFLICT (tag)"
                " DO UPDATE SET address = excluded.address, seen_at = now()",
                (tag, address),
            )
        )

    def replica_address(self, tag: str) -> str | None:
        try:
            row = self.call(
                lambda conn: conn.execute(
                    "SELECT address FROM replicas WHERE tag = %s", (tag,)
                ).fetchone()
            )
        except Unavailable:
            return None
        return None if row is None else str(row[0])

    # -- JournalStore ------------------------------------------------------------------------

    def claim(self, fresh: Entry) -> tuple[Entry, bool]:
        pinned, now = fresh.pinned, fresh.created_at

        def claim(conn: _Conn) -> tuple[Entry | None, int | None]:
            row = conn.execute(
                "INSERT INTO executions (tenant, key, digest, state, owner, generation,"
                " lease_until, pinned_time, pinned_seed, created_at, updated_at, entry_mac)"
                " VALUES (%s, %s, %s, 'running', %s, 1, now() + make_interval(secs => %s),"
                " %s, %s, %s, %s, %s) ON CONFLICT (tenant, key) DO NOTHING RETURNING generation",
                (
                    fresh.tenant,
                    fresh.key,
                    fresh.digest,
                    fresh.owner,
                    self.lease_s,
                    pinned.time_iso,
                    pinned.seed,
                    now,
                    now,
                    fresh.mac,
                ),
            ).fetchone()
            if row is not None:
                return None, int(row[0])
            return _read(conn, fresh.tenant, fresh.key), None

        found, generation = self.call(claim)
        if generation is not None:
            with self._lock:
                self._held[(fresh.tenant, fresh.key)] = generation
            return fresh, True
        if found is None:  # forgotten between the insert and the read: claim again
            return self.claim(fresh)
        return found, False

    def get(self, tenant: str, key: str) -> Entry | None:
        return self.call(lambda conn: _read(conn, tenant, key))

    def try_take_over(self, tenant: str, key: str, *, owner: str, now: float) -> Entry | None:
        def take(conn: _Conn) -> tuple[Entry, int] | None:
            with conn.transaction():
                row = conn.execute(
                    "UPDATE executions SET owner = %s, generation = generation + 1,"
                    " lease_until = now() + make_interval(secs => %s), updated_at = %s"
                    " WHERE tenant = %s AND key = %s AND state <> 'done'"
                    " AND (lease_until < now() OR owner = %s) RETURNING generation",
                    (owner, self.lease_s, now, tenant, key, owner),
                ).fetchone()
                if row is None:
                    return None
                entry = _read(conn, tenant, key)
                assert entry is not None  # the row is locked by the update
                return entry, int(row[0])

        taken = self.call(take)
        if taken is None:
            return None
        entry, generation = taken
        with self._lock:
            self._held[(tenant, key)] = generation
        log.info("took the execution over", tenant=tenant, generation=generation)
        return entry

    def take_over(self, tenant: str, key: str, *, owner: str, now: float) -> None:
        if self.try_take_over(tenant, key, owner=owner, now=now) is None:
            raise LeaseLost(
                "another replica is running this execution (its lease is live); retry "
                "under the same idempotency key"
            )

    def release(self, tenant: str, key: str) -> None:
        with self._lock:
            generation = self._held.pop((tenant, key), None)
        if generation is None:
            return

        def release(conn: _Conn) -> None:
            with conn.transaction():
                conn.execute(
                    "UPDATE executions SET lease_until = now() WHERE tenant = %s AND key = %s"
                    " AND generation = %s AND state <> 'done'",
                    (tenant, key, generation),
                )
                _notify(conn, tenant, key)

        with contextlib.suppress(Unavailable):  # the lease lapses by itself
            self.call(release)

    def record_answer(self, tenant: str, key: str, answer: ToolAnswer, *, now: float) -> None:
        generation = self._generation(tenant, key)

        def record(conn: _Conn) -> bool:
            with conn.transaction():
                fenced = conn.execute(
                    "UPDATE executions SET updated_at = %s,"
                    " lease_until = now() + make_interval(secs => %s)"
                    " WHERE tenant = %s AND key = %s AND generation = %s",
                    (now, self.lease_s, tenant, key, generation),
                )
                if fenced.rowcount != 1:
                    return False
                conn.execute(
                    "INSERT INTO tool_answers (tenant, key, seq, name, args_json, kwargs_json,"
                    " answer_json, answered_at, mac) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (tenant, key, seq) DO UPDATE SET name = excluded.name,"
                    " args_json = excluded.args_json, kwargs_json = excluded.kwargs_json,"
                    " answer_json = excluded.answer_json, answered_at = excluded.answered_at,"
                    " mac = excluded.mac",
                    answer_row(tenant, key, answer, now=now),
                )
                return True

        if not self.call(record):
            raise self._lost(tenant, key, generation)

    def save_checkpoint(self, tenant: str, key: str, checkpoint: Checkpoint, *, now: float) -> None:
        generation = self._generation(tenant, key)
        cur = self.call(
            lambda conn: (
                conn.execute(
                    "UPDATE executions SET state = 'suspended', checkpoint_seq = %s,"
                    " checkpoint = %s, checkpoint_mac = %s, checkpoint_output = %s,"
                    " updated_at = %s WHERE tenant = %s AND key = %s AND generation = %s",
                    (
                        checkpoint.seq,
                        checkpoint.blob,
                        checkpoint.mac,
                        json.dumps(checkpoint.output),
                        now,
                        tenant,
                        key,
                        generation,
                    ),
                ).rowcount
            )
        )
        if cur != 1:
            raise self._lost(tenant, key, generation)

    def finish(
        self, tenant: str, key: str, *, result_json: str, now: float, mac: bytes = b""
    ) -> None:
        generation = self._generation(tenant, key)

        def finish(conn: _Conn) -> bool:
            # One statement (one round trip, one commit): the fenced update, the answers'
            # delete and the wake-up, each only if the update took.
            done = conn.execute(
                "WITH done AS (UPDATE executions SET state = 'done', result_json = %s,"
                " result_mac = %s, checkpoint_seq = NULL, checkpoint = NULL,"
                " checkpoint_mac = NULL, checkpoint_output = NULL, updated_at = %s"
                " WHERE tenant = %s AND key = %s AND generation = %s RETURNING 1),"
                " gone AS (DELETE FROM tool_answers WHERE tenant = %s AND key = %s"
                " AND EXISTS (SELECT 1 FROM done))"
                " SELECT pg_notify(%s, %s) FROM done",
                (
                    result_json,
                    mac,
                    now,
                    tenant,
                    key,
                    generation,
                    tenant,
                    key,
                    CHANNEL,
                    wake_token(tenant, key),
                ),
            )
            return done.rowcount == 1

        if not self.call(finish):
            raise self._lost(tenant, key, generation)
        self._drop(tenant, key, generation)

    def record_done(self, entry: Entry, *, result_json: str, now: float, mac: bytes = b"") -> None:
        # Never over another replica's entry: the first record of a key stands.
        def record(conn: _Conn) -> None:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO executions (tenant, key, digest, state, owner, pinned_time,"
                    " pinned_seed, result_json, created_at, updated_at, entry_mac, result_mac)"
                    " VALUES (%s, %s, %s, 'done', %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (tenant, key) DO NOTHING",
                    done_row(entry, result_json=result_json, now=now, mac=mac),
                )
                _notify(conn, entry.tenant, entry.key)

        self.call(record)

    def forget(self, tenant: str, key: str) -> None:
        with self._lock:
            generation = self._held.pop((tenant, key), None)
        if generation is None:
            return  # not ours (any more): its record is its holder's

        def forget(conn: _Conn) -> None:
            with conn.transaction():
                conn.execute(
                    "DELETE FROM executions WHERE tenant = %s AND key = %s AND generation = %s",
                    (tenant, key, generation),
                )
                _notify(conn, tenant, key)

        self.call(forget)

    def forget_done(self, tenant: str, key: str) -> None:
        def forget(conn: _Conn) -> None:
            with conn.transaction():
                conn.execute(
                    "DELETE FROM executions WHERE tenant = %s AND key = %s AND state = 'done'",
                    (tenant, key),
                )
                _notify(conn, tenant, key)

        self.call(forget)

    def purge(self, *, before: float) -> int:
        # Any replica may purge: the delete is one statement, and the answers cascade.
        return self.call(
            lambda conn: (
                conn.execute("DELETE FROM executions WHERE updated_at < %s", (before,)).rowcount
            )
        )

    def close(self) -> None:
        self._closed.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._pool.close()


def _notify(conn: _Conn, tenant: str, key: str) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, wake_token(tenant, key)))


def _read(conn: _Conn, tenant: str, key: str) -> Entry | None:
    row = conn.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM executions WHERE tenant = %s AND key = %s",
        (tenant, key),
    ).fetchone()
    if row is None:
        return None
    (digest, state, owner, time_iso, seed, result_json, cp_seq, cp, cp_mac, cp_out,
     created_at, updated_at, entry_mac, result_mac) = row  # fmt: skip
    checkpoint = None
    if cp is not None:
        checkpoint = Checkpoint(
            seq=cp_seq, blob=bytes(cp), mac=bytes(cp_mac or b""), output=_output(cp_out)
        )
    answers = {
        int(seq): ToolAnswer(
            seq=int(seq),
            name=name,
            args_json=args,
            kwargs_json=kwargs,
            answer_json=answer,
            mac=bytes(mac),
        )
        for seq, name, args, kwargs, answer, mac in conn.execute(
            "SELECT seq, name, args_json, kwargs_json, answer_json, mac FROM tool_answers"
            " WHERE tenant = %s AND key = %s ORDER BY seq",
            (tenant, key),
        )
    }
    return Entry(
        tenant=tenant,
        key=key,
        digest=digest,
        state=state,
        owner=owner,
        pinned=Pinned(time_iso=time_iso, seed=int(seed)),
        created_at=float(created_at),
        updated_at=float(updated_at),
        result_json=result_json,
        checkpoint=checkpoint,
        answers=answers,
        mac=bytes(entry_mac),
        result_mac=bytes(result_mac),
    )


def _output(text: str | None) -> dict[str, object]:
    """A checkpoint's output as stored; text that is not a JSON object reads as {} (its
    MAC, made over the real one, then fails)."""
    try:
        output = json.loads(text or "{}")
    except ValueError:
        return {}
    return output if isinstance(output, dict) else {}
