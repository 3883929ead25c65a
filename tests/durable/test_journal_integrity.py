"""Everything the journal replays is signed: each field edited in the SQLite file (a
recorded result, a tool answer, a clock reading, the checkpoint, its output and position,
the pinned seed and time, a value moved from another entry or position) makes the replay
fail as CORRUPT_STATE, logged, with no tool called; the retry runs afresh. A journal
file of the previous schema opens, and its unsigned rows are refused the same way."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.durable import durability
from sandbox.durable.journal import SqliteJournal
from sandbox_client import FailureKind, RecoveryPolicy, SandboxClient
from tests.conftest import CapturedLog, ServerThread, running_server
from tests.durable.test_durable import (
    THREE_TOOLS,
    Counter,
    answer_two_then_disconnect,
    count_runs,
    wait_until_suspended,
)

# THREE_TOOLS reading the clock first, so the journal holds a clock reading too.
CLOCKED = "import time\nstarted = time.time()\n" + THREE_TOOLS
FRESH = RecoveryPolicy(wait_initial_s=0, wait_jitter_s=0)


class Captured(CapturedLog):
    """The durable module's log lines, with the journal's refusals picked out."""

    def refusals(self) -> list[str]:
        return [
            fields["field"]
            for level, event, fields in self.events
            if level == "warning" and event.startswith("journal entry failed its integrity")
        ]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    capture = Captured()
    monkeypatch.setattr(durability, "log", capture)
    return capture


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    with running_server() as server:
        yield server


def journal_file(srv: ServerThread) -> Path:
    return srv.server.settings.journal.state_dir / "journal.sqlite3"


def edit(srv: ServerThread, sql: str, *params: Any) -> None:
    with sqlite3.connect(journal_file(srv)) as db:
        changed = db.execute(sql, params).rowcount
    assert changed >= 1, sql


def column(srv: ServerThread, sql: str, *params: Any) -> Any:
    with sqlite3.connect(journal_file(srv)) as db:
        row = db.execute(sql, params).fetchone()
    assert row is not None, sql
    return row[0]


# -- recorded results ----------------------------------------------------------------------


def _forge_stdout(srv: ServerThread, key: str) -> None:
    result = json.loads(column(srv, "SELECT result_json FROM executions WHERE key = ?", key))
    result["stdout"] = "forged\n"
    edit(srv, "UPDATE executions SET result_json = ? WHERE key = ?", json.dumps(result), key)


def _forge_value(srv: ServerThread, key: str) -> None:
    text = column(srv, "SELECT result_json FROM executions WHERE key = ?", key)
    assert "42" in text
    edit(srv, "UPDATE executions SET result_json = ? WHERE key = ?", text.replace("42", "43"), key)


def _strip_mac(srv: ServerThread, key: str) -> None:
    edit(srv, "UPDATE executions SET result_mac = NULL WHERE key = ?", key)


def _copy_from_another_key(srv: ServerThread, key: str) -> None:
    with SandboxClient(srv.address) as client:
        assert client.execute("print('side effect')\n6 * 7", idempotency_key=key + "-b").ok
    text, mac = (
        column(srv, f"SELECT {name} FROM executions WHERE key = ?", key + "-b")
        for name in ("result_json", "result_mac")
    )
    edit(srv, "UPDATE executions SET result_json = ?, result_mac = ? WHERE key = ?", text, mac, key)


RESULT_EDITS: dict[str, Callable[[ServerThread, str], None]] = {
    "stdout": _forge_stdout,
    "value": _forge_value,
    "mac removed": _strip_mac,
    "copied from another key": _copy_from_another_key,
}


@pytest.mark.parametrize("how", sorted(RESULT_EDITS))
def test_an_edited_result_is_not_replayed(srv: ServerThread, captured: Captured, how: str) -> None:
    key = "k-result-" + how.replace(" ", "-")
    code = "print('side effect')\n6 * 7"
    runs = count_runs(srv)
    with SandboxClient(srv.address) as client:
        first = client.execute(code, idempotency_key=key)
        assert first.ok and runs[0] == 1
        RESULT_EDITS[how](srv, key)
        refused = client.execute(code, idempotency_key=key)
        assert refused.failure is not None and not refused.replayed
        assert refused.failure.kind is FailureKind.CORRUPT_STATE
        assert "failed its integrity check" in refused.failure.message
        assert captured.refusals() == ["its recorded result"]
        # The entry was discarded: the retry runs the code again, and its record is genuine.
        again = client.execute(code, idempotency_key=key)
        assert again.ok and not again.replayed and again.stdout == "side effect\n"
        assert client.execute(code, idempotency_key=key).replayed
    assert runs[0] == 2 + (how == "copied from another key")  # that one ran the other key


def test_a_result_moved_to_another_request_is_not_replayed(
    srv: ServerThread, captured: Captured
) -> None:
    """The result is bound to the request's digest: a forger who makes the entry of one
    request look like another's does not get its result replayed for the other."""
    with SandboxClient(srv.address) as client:
        assert client.execute("1", idempotency_key="k-other").ok
        other = column(srv, "SELECT digest FROM executions WHERE key = 'k-other'")
        assert client.execute("6 * 7", idempotency_key="k-moved").result == 42
        edit(srv, "UPDATE executions SET digest = ? WHERE key = 'k-moved'", other)
        refused = client.execute("1", idempotency_key="k-moved")
    assert refused.failure is not None and refused.failure.kind is FailureKind.CORRUPT_STATE
    assert captured.refusals() == ["its recorded result"]


def test_an_edited_tool_run_result_is_not_replayed(srv: ServerThread, captured: Captured) -> None:
    counter = Counter()
    with SandboxClient(srv.address) as client:
        assert client.run(THREE_TOOLS, tools=counter.tools(), idempotency_key="k-run-result").ok
        _forge_stdout(srv, "k-run-result")
        refused = client.run_tools(
            THREE_TOOLS, tools=counter.tools(), idempotency_key="k-run-result"
        )
    assert refused.failure is not None and refused.failure.kind is FailureKind.CORRUPT_STATE
    assert not refused.replayed and captured.refusals() == ["its recorded result"]
    assert counter.calls == {"step_one": 1, "step_two": 1, "step_three": 1}


# -- a suspended tool run's answers, clock readings and checkpoint -------------------------


def _answer(seq: int, name: str, value: str) -> Callable[[ServerThread, str], None]:
    def change(srv: ServerThread, key: str) -> None:
        sql = f"UPDATE tool_answers SET {name} = ? WHERE key = ? AND seq = ?"
        edit(srv, sql, value, key, seq)

    return change


def _run_field(name: str, value: Callable[[Any], Any]) -> Callable[[ServerThread, str], None]:
    def change(srv: ServerThread, key: str) -> None:
        old = column(srv, f"SELECT {name} FROM executions WHERE key = ?", key)
        edit(srv, f"UPDATE executions SET {name} = ? WHERE key = ?", value(old), key)

    return change


def _flip(blob: bytes) -> bytes:
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0x01
    return bytes(flipped)


def _printed(text: str) -> str:
    output = json.loads(text)
    output["stdout"] = "forged\n"
    return json.dumps(output)


def _answer_moved(srv: ServerThread, key: str) -> None:
    """Answer 1 (with its MAC) put in place of answer 2."""
    text, mac = (
        column(srv, f"SELECT {name} FROM tool_answers WHERE key = ? AND seq = 1", key)
        for name in ("answer_json", "mac")
    )
    sql = "UPDATE tool_answers SET answer_json = ?, mac = ? WHERE key = ? AND seq = 2"
    edit(srv, sql, text, mac, key)


def _checkpoint_from_another_run(srv: ServerThread, key: str) -> None:
    """Another run's checkpoint (same code, so a valid state), with its MAC."""
    answer_two_then_disconnect(srv.address, CLOCKED, key + "-b")
    wait_until_suspended(srv, key + "-b")
    names = ("checkpoint", "checkpoint_mac", "checkpoint_output")
    values = [column(srv, f"SELECT {n} FROM executions WHERE key = ?", key + "-b") for n in names]
    sql = "UPDATE executions SET " + ", ".join(f"{n} = ?" for n in names) + " WHERE key = ?"
    edit(srv, sql, *values, key)


SUSPENDED_EDITS: dict[str, tuple[Callable[[ServerThread, str], None], str]] = {
    "answer value": (_answer(1, "answer_json", '{"value": 999}'), "answer 1"),
    "answer error": (
        _answer(2, "answer_json", '{"error": {"type": "E", "message": "m", "kind": ""}}'),
        "answer 2",
    ),
    "answer name": (_answer(1, "name", "step_two"), "answer 1"),
    "answer arguments": (_answer(2, "args_json", "[1]"), "answer 2"),
    "answer moved": (_answer_moved, "answer 2"),
    "clock reading": (_answer(-1, "answer_json", "0.0"), "clock reading 1"),
    "checkpoint blob": (_run_field("checkpoint", _flip), "its checkpoint after call 2"),
    "checkpoint output": (_run_field("checkpoint_output", _printed), "its checkpoint after call 2"),
    "checkpoint position": (
        _run_field("checkpoint_seq", lambda _: 1),
        "its checkpoint after call 1",
    ),
    "checkpoint of another run": (_checkpoint_from_another_run, "its checkpoint after call 2"),
    "pinned seed": (
        _run_field("pinned_seed", lambda seed: seed + 1),
        "its digest and pinned values",
    ),
    "pinned time": (
        _run_field("pinned_time", lambda _: "2000-01-01T00:00:00"),
        "its digest and pinned values",
    ),
}


@pytest.mark.parametrize("how", sorted(SUSPENDED_EDITS))
def test_an_edited_suspended_run_is_not_resumed(
    srv: ServerThread, captured: Captured, how: str
) -> None:
    key = "k-suspended-" + how.replace(" ", "-")
    answer_two_then_disconnect(srv.address, CLOCKED, key)
    wait_until_suspended(srv, key)
    tamper, field = SUSPENDED_EDITS[how]
    tamper(srv, key)
    counter = Counter()
    with SandboxClient(srv.address) as client:
        refused = client.run_tools(CLOCKED, tools=counter.tools(), idempotency_key=key)
        assert refused.failure is not None
        assert refused.failure.kind is FailureKind.CORRUPT_STATE, refused.failure
        assert "failed its integrity check" in refused.failure.message
        assert counter.calls == {}  # nothing ran from the tampered record
        assert captured.refusals() == [field]
        # Discarded: the retry is a fresh run that calls each tool once.
        outcome = client.run(CLOCKED, tools=counter.tools(), idempotency_key=key, recovery=FRESH)
    assert outcome.ok, outcome.failure
    assert outcome.result.result == {"first": 11, "second": "b11", "third": 2}
    assert counter.calls == {"step_one": 1, "step_two": 1, "step_three": 1}


def test_an_untampered_suspended_run_resumes(srv: ServerThread, captured: Captured) -> None:
    """The control: the same steps without an edit resume from the checkpoint."""
    answer_two_then_disconnect(srv.address, CLOCKED, "k-suspended-control")
    wait_until_suspended(srv, "k-suspended-control")
    counter = Counter()
    with SandboxClient(srv.address) as client:
        outcome = client.run(CLOCKED, tools=counter.tools(), idempotency_key="k-suspended-control")
    assert outcome.ok and counter.calls == {"step_three": 1}
    assert captured.refusals() == []


# -- a journal file of the previous schema -------------------------------------------------

SCHEMA_1 = """
CREATE TABLE executions (
    tenant TEXT NOT NULL, key TEXT NOT NULL, digest TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'suspended', 'done')),
    owner TEXT NOT NULL, pinned_time TEXT NOT NULL, pinned_seed INTEGER NOT NULL,
    result_json TEXT, checkpoint_seq INTEGER, checkpoint BLOB, checkpoint_mac BLOB,
    checkpoint_output TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX executions_updated ON executions (updated_at);
CREATE TABLE tool_answers (
    tenant TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL,
    args_json TEXT NOT NULL, kwargs_json TEXT NOT NULL, answer_json TEXT NOT NULL,
    answered_at REAL NOT NULL, PRIMARY KEY (tenant, key, seq)
);
"""
OLD_COLUMNS = (
    "tenant, key, digest, state, owner, pinned_time, pinned_seed, result_json,"
    " checkpoint_seq, checkpoint, checkpoint_mac, checkpoint_output, created_at, updated_at"
)


def test_a_journal_of_the_previous_schema_opens_and_its_rows_are_refused(
    tmp_path: Path, captured: Captured
) -> None:
    code = "print('side effect')\n6 * 7"
    # The rows a server of the previous schema would have left: a done Execute and a
    # suspended tool run with its answers (taken from a current server, MACs dropped).
    with running_server() as current:
        with SandboxClient(current.address) as client:
            assert client.execute(code, idempotency_key="k-old-done").ok
        answer_two_then_disconnect(current.address, THREE_TOOLS, "k-old-run")
        wait_until_suspended(current, "k-old-run")
        with sqlite3.connect(journal_file(current)) as db:
            rows = db.execute(f"SELECT {OLD_COLUMNS} FROM executions").fetchall()
            answers = db.execute(
                "SELECT tenant, key, seq, name, args_json, kwargs_json, answer_json,"
                " answered_at FROM tool_answers"
            ).fetchall()
    old = tmp_path / "old.sqlite3"
    with sqlite3.connect(old) as db:
        db.executescript(SCHEMA_1)
        db.executemany(
            f"INSERT INTO executions ({OLD_COLUMNS}) VALUES ({', '.join('?' * 14)})", rows
        )
        db.executemany("INSERT INTO tool_answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", answers)
    # The checkpoint key stays the same: only the missing signatures differ.
    state_dir = current.server.settings.journal.state_dir
    with running_server(journal={"state_dir": state_dir, "path": old}) as upgraded:
        with sqlite3.connect(old) as db:
            assert db.execute("PRAGMA user_version").fetchone() == (2,)
            columns = {row[1] for row in db.execute("PRAGMA table_info(executions)")}
            assert {"entry_mac", "result_mac"} <= columns
            assert db.execute("SELECT count(*) FROM executions").fetchone() == (2,)
        counter = Counter()
        with SandboxClient(upgraded.address) as client:
            done = client.execute(code, idempotency_key="k-old-done")
            run = client.run_tools(THREE_TOOLS, tools=counter.tools(), idempotency_key="k-old-run")
            assert done.failure is not None and done.failure.kind is FailureKind.CORRUPT_STATE
            assert run.failure is not None and run.failure.kind is FailureKind.CORRUPT_STATE
            assert counter.calls == {}
            assert sorted(captured.refusals()) == [
                "its digest and pinned values",
                "its recorded result",
            ]
            # Each runs afresh once, and is replayed from then on.
            assert not client.execute(code, idempotency_key="k-old-done").replayed
            assert client.execute(code, idempotency_key="k-old-done").replayed
    # Opening it again is a no-op.
    SqliteJournal(old).close()
