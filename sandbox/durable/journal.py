"""The execution journal's storage: one record per (tenant, idempotency key) with the
request's digest, its state, the result once there is one, and for a suspended run its
last checkpoint and every tool answer received.

`JournalStore` is the seam: `SqliteJournal` (one file, WAL, no server to run) is the
default, and a networked store can replace it for several replicas. A store only keeps
records; what they mean (who may run, when to replay) is decided in `durable`."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from sandbox.backends.base import Resume

State = Literal["running", "suspended", "done"]


@dataclass(frozen=True, kw_only=True)
class Pinned:
    """What makes a run repeatable beyond its journaled answers and clock readings."""

    time_iso: str  # when the execution was first claimed, UTC, ISO 8601
    seed: int  # `random`'s seed


@dataclass(frozen=True, kw_only=True)
class Checkpoint(Resume):
    """Where a suspended Monty run resumes, as journaled: with `mac`, the HMAC of the
    blob with the server's key (see durable.checkpoint_mac), checked before any load."""

    mac: bytes


@dataclass(frozen=True, kw_only=True)
class ToolAnswer:
    """One tool call and the client's answer, as journaled (JSON texts)."""

    seq: int
    name: str
    args_json: str
    kwargs_json: str
    answer_json: str  # {"value": ...} or {"error": {"type": ..., "message": ..., "kind": ...}}


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

    @classmethod
    def running(
        cls, tenant: str, key: str, *, digest: str, owner: str, pinned: Pinned, now: float
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
        )


class JournalStore(Protocol):
    """Every write is atomic; `claim` is the only one that may race and it decides."""

    def claim(
        self, tenant: str, key: str, *, digest: str, owner: str, pinned: Pinned, now: float
    ) -> tuple[Entry, bool]:
        """The entry for (tenant, key), inserting a running one owned by `owner` when
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

    def finish(self, tenant: str, key: str, *, result_json: str, now: float) -> None:
        """Records the result; the checkpoint and tool answers are dropped."""
        ...

    def record_done(self, entry: Entry, *, result_json: str, now: float) -> None:
        """Writes `entry` as done with its result: one write for a run that was never
        claimed in the store."""
        ...

    def forget(self, tenant: str, key: str) -> None:
        """Deletes the entry, so the key may run again from the start."""
        ...

    def purge(self, *, before: float) -> int:
        """Deletes entries last touched before `before`; returns how many."""
        ...

    def close(self) -> None: ...


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
    PRIMARY KEY (tenant, key, seq)
);
"""


class SqliteJournal:
    """JournalStore in one SQLite file. WAL with synchronous=NORMAL: a committed write
    survives the server process being killed (not necessarily a power cut).

    Calls are short and made from the event loop; a lock serialises the connection."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def claim(
        self, tenant: str, key: str, *, digest: str, owner: str, pinned: Pinned, now: float
    ) -> tuple[Entry, bool]:
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO executions (tenant, key, digest, state, owner,"
                " pinned_time, pinned_seed, created_at, updated_at)"
                " VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                (tenant, key, digest, owner, pinned.time_iso, pinned.seed, now, now),
            )
            if cur.rowcount == 1:  # the common case: no need to read back what we wrote
                fresh = Entry.running(
                    tenant, key, digest=digest, owner=owner, pinned=pinned, now=now
                )
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
            " created_at, updated_at FROM executions WHERE tenant = ? AND key = ?",
            (tenant, key),
        ).fetchone()
        if row is None:
            return None
        (digest, state, owner, time_iso, seed, result_json, cp_seq, cp, cp_mac, cp_out,
         created_at, updated_at) = row  # fmt: skip
        checkpoint = None
        if cp is not None:
            checkpoint = Checkpoint(
                seq=cp_seq, blob=bytes(cp), mac=bytes(cp_mac), output=json.loads(cp_out or "{}")
            )
        answers = {
            seq: ToolAnswer(
                seq=seq, name=name, args_json=args, kwargs_json=kwargs, answer_json=answer
            )
            for seq, name, args, kwargs, answer in self._db.execute(
                "SELECT seq, name, args_json, kwargs_json, answer_json FROM tool_answers"
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
                "INSERT OR REPLACE INTO tool_answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tenant,
                    key,
                    answer.seq,
                    answer.name,
                    answer.args_json,
                    answer.kwargs_json,
                    answer.answer_json,
                    now,
                ),
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

    def finish(self, tenant: str, key: str, *, result_json: str, now: float) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE executions SET state = 'done', result_json = ?, checkpoint_seq = NULL,"
                " checkpoint = NULL, checkpoint_mac = NULL, checkpoint_output = NULL,"
                " updated_at = ? WHERE tenant = ? AND key = ?",
                (result_json, now, tenant, key),
            )
            self._db.execute("DELETE FROM tool_answers WHERE tenant = ? AND key = ?", (tenant, key))

    def record_done(self, entry: Entry, *, result_json: str, now: float) -> None:
        self._write(
            "INSERT OR REPLACE INTO executions (tenant, key, digest, state, owner,"
            " pinned_time, pinned_seed, result_json, created_at, updated_at)"
            " VALUES (?, ?, ?, 'done', ?, ?, ?, ?, ?, ?)",
            (
                entry.tenant,
                entry.key,
                entry.digest,
                entry.owner,
                entry.pinned.time_iso,
                entry.pinned.seed,
                result_json,
                entry.created_at,
                now,
            ),
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

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        with self._lock:
            self._db.execute(sql, params)
