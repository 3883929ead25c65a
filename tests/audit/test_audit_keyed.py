"""Attacks on the audit log, each caught: a record edited with every later hash recomputed
(its MAC), the oldest file deleted (its successor's rotation record), the tail cut off (the
anchor), and the file replaced, deleted, renamed, truncated or appended to while the server
writes it (the writer notices, goes on in a new file and says so; verify names the gap)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.audit import log as audit_log
from sandbox.audit.log import (
    ANCHOR_NAME,
    AuditLog,
    canonical,
    log_files,
    read_key,
    record_hash,
    verify,
)
from sandbox.cli.commands import main
from sandbox.config import AuditSettings
from sandbox_client import SandboxClient
from tests.conftest import CapturedLog, ServerThread, running_server

Captured = CapturedLog


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    capture = Captured()
    monkeypatch.setattr(audit_log, "log", capture)
    return capture


def writer(directory: Path, **fields: Any) -> AuditLog:
    settings = AuditSettings(dir=directory, fsync="never", **fields)
    log = AuditLog(settings, default_key_file=directory.parent / "audit.key")
    log.start()
    return log


def write(log: AuditLog, n: int, *, flush_every: int = 10) -> None:
    for i in range(n):
        log.submit({"tenant": "t", "kind": "OK", "n": i})
        if i % flush_every == flush_every - 1:
            log.flush()
    log.flush()


def rewrite_chain(path: Path, edit_line: int) -> None:
    """What a forger without the key does: edits a record, then recomputes its hash and
    every later link and hash, so that the chain holds again."""
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    records[edit_line - 1]["tenant"] = "someone-else"
    prev = records[0]["prev"]
    lines = []
    for record in records:
        record.pop("hash")
        record["prev"] = prev
        record["hash"] = prev = record_hash(record)
        lines.append(canonical(record) + b"\n")
    path.write_bytes(b"".join(lines))


# -- keyed records ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A log a real server wrote (300 executions), and its key file."""
    directory = tmp_path_factory.mktemp("keyed") / "audit"
    with running_server(audit={"dir": directory}) as srv:
        with SandboxClient(srv.address, timeout_s=60) as c:
            for i in range(300):
                c.execute(f"{i} * 2", backend="monty")
        assert srv.server.audit is not None
        srv.server.audit.flush()
        key_file = srv.server.audit.key_file
    yield directory, key_file


def test_the_server_signs_with_a_private_key_outside_the_log(served_log: tuple[Path, Path]) -> None:
    directory, key_file = served_log
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert directory not in key_file.parents and len(read_key(key_file)) == 64
    report = verify([directory], key=read_key(key_file))
    assert report.ok and report.macs_checked, report.error
    assert report.records == 300 and report.anchor_seq == 300 and report.warnings == []
    first = json.loads(log_files(directory)[0].read_bytes().splitlines()[0])
    assert first["mac"].startswith("hmac-sha256:") and first["seq"] == 1


def test_an_edit_with_recomputed_hashes_fails_its_mac(
    served_log: tuple[Path, Path], tmp_path: Path
) -> None:
    directory, key_file = served_log
    forged = tmp_path / "audit"
    shutil.copytree(directory, forged)
    (path,) = log_files(forged)
    rewrite_chain(path, edit_line=100)
    # Without the key the rewritten file passes, as the whole chain did before keying.
    unkeyed = verify([path])
    assert unkeyed.ok and "MACs not checked" in unkeyed.warnings[-1]
    keyed = verify([path], key=read_key(key_file))
    assert keyed.error == (
        f"{path}:100: record seq 100: its MAC does not match: edited (with its hash "
        "recomputed), or not signed with this key"
    )
    assert keyed.records == 99
    # The directory's anchor names a head the rewritten chain no longer has.
    whole = verify([forged])
    assert not whole.ok and "is not the head its anchor names" in whole.error
    # A forged anchor to match fails its own MAC.
    anchor = json.loads((forged / ANCHOR_NAME).read_bytes())
    anchor["hash"] = json.loads(path.read_bytes().splitlines()[-1])["hash"]
    (forged / ANCHOR_NAME).write_bytes(canonical(anchor))
    assert verify([forged]).ok  # unkeyed: nothing to catch it with
    assert "anchor's MAC does not match" in verify([forged], key=read_key(key_file)).error


def test_another_key_fails_at_the_first_record(served_log: tuple[Path, Path]) -> None:
    directory, _ = served_log
    (path,) = log_files(directory)
    report = verify([path], key=b"0" * 64)
    assert report.error.startswith(f"{path}:1: record: its MAC does not match")


def test_stripped_macs_fail(served_log: tuple[Path, Path], tmp_path: Path) -> None:
    directory, key_file = served_log
    path = tmp_path / "audit-000001.jsonl"
    lines = []
    prev = None
    for raw in log_files(directory)[0].read_bytes().splitlines():
        record = json.loads(raw)
        del record["hash"], record["mac"]
        record["prev"] = prev or record["prev"]
        record["hash"] = prev = record_hash(record)
        lines.append(canonical(record) + b"\n")
    path.write_bytes(b"".join(lines))
    assert verify([path]).ok
    report = verify([path], key=read_key(key_file))
    assert report.error == (
        f"{path}:1: record: has no MAC (written without a key, or it was removed)"
    )


def test_cli_verifies_with_the_key_file(
    served_log: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory, key_file = served_log
    assert main(["audit", "verify", str(directory), "--key-file", str(key_file)]) == 0
    out = capsys.readouterr().out
    assert "OK: 300 record(s)" in out and "MACs checked" in out and "anchor at seq 300" in out
    forged = tmp_path / "audit"
    shutil.copytree(directory, forged)
    rewrite_chain(log_files(forged)[0], edit_line=7)
    assert main(["audit", "verify", str(log_files(forged)[0]), "--key-file", str(key_file)]) == 1
    assert "record seq 7: its MAC does not match" in capsys.readouterr().out
    assert main(["audit", "verify", str(directory), "--key-file", str(tmp_path / "none")]) == 2


# -- a missing start ---------------------------------------------------------------------


def rotated_log(directory: Path) -> AuditLog:
    """120 records in several files (a rotation asked for every 20 records)."""
    log = writer(directory)
    for i in range(120):
        log.submit({"tenant": "t", "kind": "OK", "n": i})
        if i % 20 == 4 and i < 110:
            log.rotate()
        if i % 10 == 9:
            log.flush()
    log.close()
    return log


def test_a_deleted_oldest_file_is_an_error_unless_the_start_is_given(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    key = read_key(rotated_log(directory).key_file)
    files = log_files(directory)
    assert len(files) > 5 and verify([directory], key=key).ok
    first_of_second = json.loads(files[1].read_bytes().splitlines()[0])
    assert first_of_second["rotation"] == "requested"
    assert first_of_second["previous_file"] == files[0].name
    after, prev = first_of_second["after_seq"], first_of_second["prev"]
    files[0].unlink()
    report = verify([directory], key=key)
    assert report.error.startswith(
        f"{files[1]}:1: the log starts with a rotation record after seq {after} (requested: "
    )
    assert f"--start {after}:{prev}" in report.error
    # Told where the archived files ended, it checks the rest.
    report = verify([directory], key=key, start=(after, prev))
    assert report.ok and report.first_seq == after + 1 and report.records == 120 - after
    wrong = verify([directory], key=key, start=(after - 1, prev))
    assert "not after the given start" in wrong.error
    # Files named one by one state their own start: a warning, as before.
    named = verify(log_files(directory), key=key)
    assert named.ok and "the chain starts at seq" in named.warnings[0]


def test_records_cut_from_the_start_of_the_first_file_are_an_error(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    key = read_key(rotated_log(directory).key_file)
    first = log_files(directory)[0]
    lines = first.read_bytes().splitlines(keepends=True)
    first.write_bytes(b"".join(lines[3:]))
    report = verify([directory], key=key)
    assert report.error == (
        f"{first}:1: the chain starts at seq 4 with no rotation record before it: the records "
        "before it were removed"
    )


def test_a_deleted_middle_file_names_the_missing_records(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    key = read_key(rotated_log(directory).key_file)
    files = log_files(directory)
    before = json.loads(files[2].read_bytes().splitlines()[0])["after_seq"]
    after = json.loads(files[3].read_bytes().splitlines()[0])["after_seq"]
    files[2].unlink()
    report = verify([directory], key=key)
    assert report.error.startswith(
        f"{files[3]}:1: records seq {before + 1}..{after} are missing before this file"
    )


# -- a cut-off tail ----------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["last records", "newest file"])
def test_a_cut_off_tail_is_caught_by_the_anchor(tmp_path: Path, cut: str) -> None:
    directory = tmp_path / "audit"
    key = read_key(rotated_log(directory).key_file)
    newest = log_files(directory)[-1]
    if cut == "last records":
        lines = newest.read_bytes().splitlines(keepends=True)
        newest.write_bytes(b"".join(lines[:-3]))
        ends = 117
    else:
        ends = json.loads(newest.read_bytes().splitlines()[0])["after_seq"]
        newest.unlink()
    report = verify([directory], key=key)
    assert report.error.startswith(
        f"{directory / ANCHOR_NAME}: the log ends at seq {ends} but its anchor names seq 120 ("
    )
    assert report.error.endswith("records were cut off the end")
    # Without the anchor, the shorter chain is whole: what the anchor is for.
    assert verify([directory], key=key, check_anchor=False).ok
    (directory / ANCHOR_NAME).unlink()
    assert "no anchor file" in verify([directory], key=key).error


def test_an_anchor_kept_elsewhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory, anchor = tmp_path / "audit", tmp_path / "elsewhere" / "head.json"
    anchor.parent.mkdir()
    log = writer(directory, anchor_file=anchor)
    write(log, 30)
    log.close()
    assert not (directory / ANCHOR_NAME).exists()
    key_file = str(log.key_file)
    newest = log_files(directory)[-1]
    newest.write_bytes(b"".join(newest.read_bytes().splitlines(keepends=True)[:-1]))
    args = ["audit", "verify", str(directory), "--key-file", key_file]
    assert main([*args, "--anchor", str(anchor)]) == 1
    assert "the log ends at seq 29 but its anchor names seq 30" in capsys.readouterr().out
    assert main([*args, "--no-anchor"]) == 0


def test_a_restart_after_the_tail_was_cut_keeps_the_loss_visible(
    tmp_path: Path, captured: Captured
) -> None:
    directory = tmp_path / "audit"
    log = writer(directory)
    write(log, 50)
    log.close()
    (only,) = log_files(directory)
    only.write_bytes(b"".join(only.read_bytes().splitlines(keepends=True)[:40]))
    again = writer(directory)
    write(again, 1)
    again.close()
    assert ("error", "audit log ends before its anchor") in [e[:2] for e in captured.events]
    _, new = log_files(directory)
    rotation = json.loads(new.read_bytes().splitlines()[0])
    assert rotation["rotation"] == "anchor" and rotation["after_seq"] == 50
    report = verify([directory], key=read_key(log.key_file))
    assert report.error.startswith(f"{new}:1: records seq 41..50 are missing before this file")


# -- a file changed while the server writes it ------------------------------------------


def _replace_with_an_edited_copy(path: Path) -> None:
    copy = path.with_suffix(".swp")
    copy.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-2]))
    os.replace(copy, path)  # as an editor saves


def _append_a_line(path: Path) -> None:
    with path.open("ab") as f:
        f.write(b'{"forged": true}\n')


CHANGES = {
    "replaced": _replace_with_an_edited_copy,
    "deleted": lambda path: path.unlink(),
    "renamed": lambda path: path.rename(path.with_name(path.name + ".1")),  # logrotate
    "truncated": lambda path: os.truncate(path, 0),  # logrotate's copytruncate
    "appended": _append_a_line,
}


def run_some(srv: ServerThread, n: int, start: int) -> None:
    with SandboxClient(srv.address, timeout_s=60) as c:
        for i in range(start, start + n):
            assert c.execute(f"{i}", backend="monty").ok
    assert srv.server.audit is not None
    srv.server.audit.flush()


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_file_changed_under_the_running_server(
    tmp_path: Path, captured: Captured, change: str
) -> None:
    directory = tmp_path / "audit"
    with running_server(audit={"dir": directory, "fsync": "always"}) as srv:
        run_some(srv, 5, 0)
        (path,) = log_files(directory)
        CHANGES[change](path)
        run_some(srv, 3, 5)
        assert srv.server.audit is not None
        key = read_key(srv.server.audit.key_file)
    errors = [e for e in captured.events if e[0] == "error"]
    assert len(errors) == 1 and errors[0][1].startswith("audit file changed behind the writer")
    assert path.name in errors[0][2]["detail"]
    new = log_files(directory)[-1]
    rotation, *after = (json.loads(line) for line in new.read_bytes().splitlines())
    kind = {"renamed": "deleted"}.get(change, change)
    assert rotation["rotation"] == kind and rotation["after_seq"] == 5
    assert rotation["detail"].startswith(f"{path.name} was ")
    assert "it had written seq 1..5 there" in rotation["detail"]
    assert [r["seq"] for r in after] == [6, 7, 8]  # nothing written after the change is lost
    report = verify([directory], key=key)
    expected = {
        "replaced": f"{new}:1: records seq 4..5 are missing before this file",
        "deleted": f"{new}:1: the log starts with a rotation record after seq 5 (deleted: ",
        "renamed": f"{new}:1: the log starts with a rotation record after seq 5 (deleted: ",
        "truncated": f"{new}:1: the log starts with a rotation record after seq 5 (truncated: ",
        "appended": f"{path}:6: record seq 6: unreadable",
    }[change]
    assert report.error.startswith(expected), report.error
    if change == "renamed":
        # The renamed file given first, the chain is whole, and the rotation is reported.
        whole = verify([path.with_name(path.name + ".1"), directory], key=key)
        assert whole.ok and whole.records == 8, whole.error
        assert any("the writer rotated here (deleted: " in w for w in whole.warnings)


def test_a_deleted_anchor_is_written_again(tmp_path: Path, captured: Captured) -> None:
    directory = tmp_path / "audit"
    log = writer(directory)
    write(log, 5)
    (directory / ANCHOR_NAME).unlink()
    write(log, 5)
    assert verify([directory], key=read_key(log.key_file)).anchor_seq == 10
    log.close()
    assert ("warning", "audit anchor was replaced or deleted; rewritten") in [
        e[:2] for e in captured.events
    ]


def test_a_log_from_before_signing_goes_on_in_a_new_file(tmp_path: Path) -> None:
    """The upgrade: records without MACs, then a server that signs."""
    directory = tmp_path / "audit"
    directory.mkdir()
    prev, lines = audit_log.GENESIS, []
    for seq in range(1, 6):
        record: dict[str, Any] = {"tenant": "t", "kind": "OK", "seq": seq, "prev": prev}
        record["hash"] = prev = record_hash(record)
        lines.append(canonical(record) + b"\n")
    (directory / "audit-000001.jsonl").write_bytes(b"".join(lines))
    log = writer(directory)
    write(log, 3)
    log.close()
    old, new = log_files(directory)
    rotation = json.loads(new.read_bytes().splitlines()[0])
    assert rotation["rotation"] == "key" and rotation["after_seq"] == 5
    key = read_key(log.key_file)
    assert "record: has no MAC" in verify([directory], key=key).error
    assert verify([old]).ok
    start = (rotation["after_seq"], rotation["prev"])
    assert verify([new], key=key, start=start, check_anchor=True, anchor=directory / ANCHOR_NAME).ok
