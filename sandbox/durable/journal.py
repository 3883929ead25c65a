"""The execution journal's storage: one record per (tenant, idempotency key) with the
request's digest, its state, the result once there is one, and for a suspended run its
last checkpoint and every tool answer received.

`JournalStore` is the seam: `SqliteJournal` (one file, WAL, no server to run) is the
default; `SharedJournalStore` is a store several replicas share (durable/postgres.py),
whose entries being run are leased: an owner, a deadline its heartbeat renews and a
generation that every write is fenced on. A store only keeps
records; what they mean (who may run, when to replay) is decided in `durable`.

Everything replayed from a store carries a MAC made in `durable` (checkpoints.journal_mac)
and checked there before use: the entry's digest and pinned values (`Entry.mac`), its
result (`Entry.result_mac`), every tool answer and clock reading (`ToolAnswer.mac`) and
the checkpoint with its output (`Checkpoint.mac`). A store keeps them beside what they
sign and hands them back as stored; a field without one reads as b"" (never genuine)."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from sandbox.backends.base import Resume
from sandbox.errors import ConfigError

State = Literal["running", "suspended", "done"]


@dataclass(frozen=True, kw_only=True)
class Pinned:
    """What makes a run repeatable beyond its journaled answers and clock readings."""

    time_iso: str  # when the execution was first claimed, UTC, ISO 8601
    seed: int  # `random`'s seed


@dataclass(frozen=True, kw_only=True)
class Checkpoint(Resume):
    """Where a suspended Monty run resumes, as journaled: with `mac`, the HMAC of the
    blob and the output with the server's key (see durable.checkpoint_mac), checked
    before any load."""

    mac: bytes


@dataclass(frozen=True, kw_only=True)
class ToolAnswer:
    """One tool call and the client's answer, as journaled (JSON texts)."""

    seq: int
    name: str
    args_json: str
    kwargs_json: str
    answer_json: str  # {"value": ...} or {"error": {"type": ..., "message": ..., "kind": ...}}
    mac: bytes = b""  # of all the above, bound to the run (checkpoints.journal_mac)


@dataclass(frozen=True, kw_only=True)
class Entry:
    tenant: str
    key: str
    digest: str
    state: State
    owner: str  # the server instance running it (meaningful while not done)
    pinned: Pinned
    created_at: float
    updated_at: float
    result_json: str | None = None
    checkpoint: Checkpoint | None = None
    answers: dict[int, ToolAnswer] = field(default_factory=dict)
    mac: bytes = b""  # of digest and pinned, bound to (tenant, key)
    result_mac: bytes = b""  # of digest and result_json, bound to (tenant, key)

    @classmethod
    def running(
        cls,
        tenant: str,
        key: str,
        *,
        digest: str,
        owner: str,
        pinned: Pinned,
        now: float,
        mac: bytes = b"",
    ) -> Entry:
        """A new entry, just claimed by `owner`."""
        return cls(
            tenant=tenant,
            key=key,
            digest=digest,
            state="running",
            owner=owner,
            pinned=pinned,
            created_at=now,
            updated_at=now,
            mac=mac,
        )


_ANSWER_FIELDS = tuple(f.name for f in fields(ToolAnswer))
_ANSWER_COLUMNS = ", ".join("COALESCE(mac, X'')" if f == "mac" else f for f in _ANSWER_FIELDS)


class JournalStore(Protocol):
    """Every write is atomic; `claim` is the only one that may race and it decides."""

    def claim(self, fresh: Entry) -> tuple[Entry, bool]:
        """The entry for (fresh.tenant, fresh.key), inserting `fresh` (Entry.running:
        its owner, pinned values and the signature of its digest and pinned values) when
        there is none. The bool says whether this call inserted it."""
        ...

    def get(self, tenant: str, key: str) -> Entry | None: ...

    def take_over(self, tenant: str, key: str, *, owner: str, now: float) -> None:
        """Makes `owner` the runner of an entry whose previous runner is gone."""
        ...

    def record_answer(self, tenant: str, key: str, answer: ToolAnswer, *, now: float) -> None: ...

    def save_checkpoint(
        self, tenant: str, key: str, checkpoint: Checkpoint, *, now: float
    ) -> None: ...

    def finish(
        self, tenant: str, key: str, *, result_json: str, now: float, mac: bytes = b""
    ) -> None:
        """Records the result and its signature `mac`; the checkpoint and tool answers
        are dropped."""
        ...

    def record_done(self, entry: Entry, *, result_json: str, now: float, mac: bytes = b"") -> None:
        """Writes `entry` (with its `entry.mac`) as done with its result and the result's
        signature `mac`: one write for a run that was never claimed in the store."""
        ...

    def forget(self, tenant: str, key: str) -> None:
        """Deletes the entry, so the key may run again from the start."""
        ...

    def purge(self, *, before: float) -> int:
        """Deletes entries last touched before `before`; returns how many."""
        ...

    def close(self) -> None: ...


class Watch(Protocol):
    """A wake-up for one entry, registered before the caller looks at it (so no change
    between the look and the wait is missed)."""

    async def wait(self, timeout_s: float) -> None:
        """Returns when the entry changed (finished, forgotten, released) or after
        `timeout_s`, whichever is first."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SharedJournalStore(JournalStore, Protocol):
    """A JournalStore several server replicas share. An entry this store inserted
    (`claim`) or took over is leased to it: its heartbeat renews the lease, and every
    write to the entry is fenced on the generation it holds, so a replica whose lease
    lapsed (it was paused, or cut off) raises LeaseLost instead of overwriting its
    successor. `take_over` takes only an entry whose lease lapsed (or this store's own)."""

    lease_s: float

    def try_take_over(self, tenant: str, key: str, *, owner: str, now: float) -> Entry | None:
        """The entry, now leased to this store under a new generation, read after the
        take-over; None while another replica's lease on it is live or it is done."""
        ...

    def release(self, tenant: str, key: str) -> None:
        """Gives up this store's lease on the entry (kept for another replica to take
        over at once) and wakes its waiters; nothing if it holds none. Never raises."""
        ...

    def forget_done(self, tenant: str, key: str) -> None:
        """Deletes the entry if it is done (its record failed its MAC). `forget` deletes
        only an entry this store holds the lease of."""
        ...

    def watch(self, tenant: str, key: str) -> Watch: ...

    def register_replica(self, tag: str, address: str) -> None:
        """Records where the replica `tag` serves (for sessions: see core/sessions.py)."""
        ...

    def replica_address(self, tag: str) -> str | None:
        """Where the replica `tag` said it serves; None if unknown or unreachable."""
        ...

    def reachable(self) -> bool:
        """Whether the store answered its last probe (for the server's health)."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    digest TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'suspended', 'done')),
    owner TEXT NOT NULL,
    pinned_time TEXT NOT NULL,
    pinned_seed INTEGER NOT NULL,
    result_json TEXT,
    checkpoint_seq INTEGER,
    checkpoint BLOB,
    checkpoint_mac BLOB,
    checkpoint_output TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    entry_mac BLOB,
    result_mac BLOB,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX IF NOT EXISTS executions_updated ON executions (updated_at);
CREATE TABLE IF NOT EXISTS tool_answers (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    args_json TEXT NOT NULL,
    kwargs_json TEXT NOT NULL,
    answer_json TEXT NOT NULL,
    answered_at REAL NOT NULL,
    mac BLOB,
    PRIMARY KEY (tenant, key, seq)
);
"""
# Schema 2 added the MAC columns. A file of schema 1 gets them on open, empty: its rows
# are unsigned, so a replay of one is refused as CORRUPT_STATE (and it is discarded, so the
# retry runs afresh) until retention purges the rest.
_SCHEMA_VERSION = 2
_ADDED_COLUMNS = {
    "executions": ("entry_mac BLOB", "result_mac BLOB"),
    "tool_answers": ("mac BLOB",),
}


class SqliteJournal:
    """JournalStore in one SQLite file. WAL with synchronous=NORMAL: a committed write
    survives the server process being killed (not necessarily a power cut).

    Calls are short and made from the event loop; a lock serialises the connection."""

    def __init__(self, path: Path | str) -> None:
        self._owner_lock: int | None = None
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._owner_lock = _lock_for_this_process(Path(path))
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Brings a journal file of an earlier schema up to this one (adds columns)."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version >= _SCHEMA_VERSION:
            return
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for table, columns in _ADDED_COLUMNS.items():
                have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                for column in columns:
                    if column.split()[0] not in have:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def claim(self, fresh: Entry) -> tuple[Entry, bool]:
        tenant, key, pinned, now = fresh.tenant, fresh.key, fresh.pinned, fresh.created_at
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO executions (tenant, key, digest, state, owner,"
                " pinned_time, pinned_seed, created_at, updated_at, entry_mac)"
                " VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (
                    tenant,
                    key,
                    fresh.digest,
                    fresh.owner,
                    pinned.time_iso,
                    pinned.seed,
                    now,
                    now,
                    fresh.mac,
                ),
            )
            if cur.rowcount == 1:  # the common case: no need to read back what we wrote
                return fresh, True
            entry = self._get(tenant, key)
        assert entry is not None
        return entry, False

    def get(self, tenant: str, key: str) -> Entry | None:
        with self._lock:
            return self._get(tenant, key)

    def _get(self, tenant: str, key: str) -> Entry | None:
        row = self._db.execute(
            "SELECT digest, state, owner, pinned_time, pinned_seed, result_json,"
            " checkpoint_seq, checkpoint, checkpoint_mac, checkpoint_output,"
            " created_at, updated_at, entry_mac, result_mac"
            " FROM executions WHERE tenant = ? AND key = ?",
            (tenant, key),
        ).fetchone()
        if row is None:
            return None
        (digest, state, owner, time_iso, seed, result_json, cp_seq, cp, cp_mac, cp_out,
         created_at, updated_at, entry_mac, result_mac) = row  # fmt: skip
        checkpoint = None
        if cp is not None:
            checkpoint = Checkpoint(
                seq=cp_seq, blob=bytes(cp), mac=_blob(cp_mac), output=_output(cp_out)
            )
        # The columns are ToolAnswer's fields, in its order (a row of schema 1 has no mac).
        answers = {
            row[0]: ToolAnswer(**dict(zip(_ANSWER_FIELDS, row, strict=True)))
            for row in self._db.execute(
                f"SELECT {_ANSWER_COLUMNS} FROM tool_answers"
                " WHERE tenant = ? AND key = ? ORDER BY seq",
                (tenant, key),
            )
        }
        return Entry(
            tenant=tenant,
            key=key,
            digest=digest,
            state=state,
            owner=owner,
            pinned=Pinned(time_iso=time_iso, seed=seed),
            created_at=created_at,
            updated_at=updated_at,
            result_json=result_json,
            checkpoint=checkpoint,
            answers=answers,
            mac=_blob(entry_mac),
            result_mac=_blob(result_mac),
        )

    def take_over(self, tenant: str, key: str, *, owner: str, now: float) -> None:
        self._write(
            "UPDATE executions SET owner = ?, updated_at = ? WHERE tenant = ? AND key = ?",
            (owner, now, tenant, key),
        )

    def record_answer(self, tenant: str, key: str, answer: ToolAnswer, *, now: float) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO tool_answers (tenant, key, seq, name, args_json,"
                " kwargs_json, answer_json, answered_at, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                answer_row(tenant, key, answer, now=now),
            )
            self._db.execute(
                "UPDATE executions SET updated_at = ? WHERE tenant = ? AND key = ?",
                (now, tenant, key),
            )

    def save_checkpoint(self, tenant: str, key: str, checkpoint: Checkpoint, *, now: float) -> None:
        self._write(
            "UPDATE executions SET state = 'suspended', checkpoint_seq = ?, checkpoint = ?,"
            " checkpoint_mac = ?, checkpoint_output = ?, updated_at = ?"
            " WHERE tenant = ? AND key = ?",
            (
                checkpoint.seq,
                checkpoint.blob,
                checkpoint.mac,
                json.dumps(checkpoint.output),
                now,
                tenant,
                key,
            ),
        )

    def finish(
        self, tenant: str, key: str, *, result_json: str, now: float, mac: bytes = b""
    ) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE executions SET state = 'done', result_json = ?, result_mac = ?,"
                " checkpoint_seq = NULL, checkpoint = NULL, checkpoint_mac = NULL,"
                " checkpoint_output = NULL, updated_at = ? WHERE tenant = ? AND key = ?",
                (result_json, mac, now, tenant, key),
            )
            self._db.execute("DELETE FROM tool_answers WHERE tenant = ? AND key = ?", (tenant, key))

    def record_done(self, entry: Entry, *, result_json: str, now: float, mac: bytes = b"") -> None:
        self._write(
            "INSERT OR REPLACE INTO executions (tenant, key, digest, state, owner,"
            " pinned_time, pinned_seed, result_json, created_at, updated_at, entry_mac,"
            " result_mac) VALUES (?, ?, ?, 'done', ?, ?, ?, ?, ?, ?, ?, ?)",
            done_row(entry, result_json=result_json, now=now, mac=mac),
        )

    def forget(self, tenant: str, key: str) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM executions WHERE tenant = ? AND key = ?", (tenant, key))
            self._db.execute("DELETE FROM tool_answers WHERE tenant = ? AND key = ?", (tenant, key))

    def purge(self, *, before: float) -> int:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "DELETE FROM tool_answers WHERE (tenant, key) IN"
                " (SELECT tenant, key FROM executions WHERE updated_at < ?)",
                (before,),
            )
            cur = self._db.execute("DELETE FROM executions WHERE updated_at < ?", (before,))
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._owner_lock is not None:
            os.close(self._owner_lock)  # releases the lock
            self._owner_lock = None

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        with self._lock:
            self._db.execute(sql, params)


def _lock_for_this_process(path: Path) -> int:
    """Takes `path`'s owner lock (beside it, `<name>.lock`) or raises ConfigError: a
    journal file has one owner, and a second server on it would run keys twice."""
    fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(
            f"the journal {path} is in use by process {holder}: one server per journal "
            "(give this one its own [journal] state_dir)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def done_row(entry: Entry, *, result_json: str, now: float, mac: bytes) -> tuple[object, ...]:
    """An executions row for `entry` finished with `result_json`, in the column order both
    stores insert it: tenant, key, digest, owner, pinned_time, pinned_seed, result_json,
    created_at, updated_at, entry_mac, result_mac."""
    return (
        entry.tenant,
        entry.key,
        entry.digest,
        entry.owner,
        entry.pinned.time_iso,
        entry.pinned.seed,
        result_json,
        entry.created_at,
        now,
        entry.mac,
        mac,
    )


def answer_row(tenant: str, key: str, answer: ToolAnswer, *, now: float) -> tuple[object, ...]:
    """A tool_answers row, in the column order both stores insert it: tenant, key, seq,
    name, args_json, kwargs_json, answer_json, answered_at, mac."""
    return (
        tenant,
        key,
        answer.seq,
        answer.name,
        answer.args_json,
        answer.kwargs_json,
        answer.answer_json,
        now,
        answer.mac,
    )


def journal_holder(path: Path) -> str:
    """The pid written in `path`'s owner lock by the server holding it; "" when no
    process holds it (or it cannot be read)."""
    try:
        fd = os.open(_lock_path(path), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)  # also lets go of the lock, if we took it
    return ""


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _blob(value: bytes | None) -> bytes:
    return bytes(value) if value is not None else b""


def _output(text: str | None) -> dict[str, object]:
    """A checkpoint's output as stored; text that is not a JSON object reads as {} (its
    MAC, made over the real one, then fails)."""
    try:
        output = json.loads(text or "{}")
    except ValueError:
        return {}
    return output if isinstance(output, dict) else {}
