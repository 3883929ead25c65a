"""The audit log: 10,000 real executions verify; one flipped byte, one deleted record and
two swapped records each fail at the right record; rotation keeps the chain; a server
SIGKILLed under load leaves a log that verifies up to its last whole record."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox.audit.log import GENESIS, AuditLog, VerifyReport, log_files, query, verify
from sandbox.cli.commands import main
from sandbox.config import AuditSettings
from sandbox_client import SandboxClient
from tests.conftest import REPO, running_server

N = 10_000


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("audit")
    with running_server(audit={"dir": directory}) as srv:
        with SandboxClient(srv.address, timeout_s=60) as c:
            for i in range(N - 1):
                c.execute(f"{i} + 1", backend="monty")
            c.execute("1/0", backend="monty", idempotency_key="k-last")
        assert srv.server.audit is not None
        srv.server.audit.flush()
    yield directory


def lines_of(directory: Path) -> tuple[Path, list[bytes]]:
    (only,) = log_files(directory)
    return only, only.read_bytes().splitlines(keepends=True)


def verify_tampered(
    log: Path, tmp_path: Path, edit: Callable[[list[bytes]], list[bytes]]
) -> tuple[Path, VerifyReport]:
    """A copy of `log` whose lines went through `edit`: its file, and what verify says."""
    path, lines = lines_of(shutil.copytree(log, tmp_path / "log"))
    path.write_bytes(b"".join(edit(lines)))
    return path, verify([path])


def test_ten_thousand_executions_verify(big_log: Path) -> None:
    started = time.perf_counter()
    report = verify([big_log])
    elapsed = time.perf_counter() - started
    assert report.ok, report.error
    assert report.records == N and report.first_seq == 1 and report.last_seq == N
    print(f"verify {N} records: {elapsed:.2f} s")
    _, lines = lines_of(big_log)
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert first["prev"] == GENESIS and first["tenant"] == "local"
    assert first["code"] == "0 + 1" and first["kind"] == "OK" and first["backend"] == "monty"
    assert first["policy"] == "default" and first["policy_digest"].startswith("sha256:")
    assert first["limits"]["wall_time_ms"] == 10_000 and first["request_id"].startswith("exe_")
    assert last["kind"] == "RUNTIME_ERROR" and last["idempotency_key"] == "k-last"
    assert last["code_sha256"].startswith("sha256:") and "wall_ms" in last["usage"]


def test_flipped_byte_fails_at_that_record(big_log: Path, tmp_path: Path) -> None:
    def flip(lines: list[bytes]) -> list[bytes]:
        line = bytearray(lines[4999])
        at = line.index(b'"code":"') + len(b'"code":"')
        line[at] ^= 0x01  # "4998 + 1" -> "5998 + 1"
        lines[4999] = bytes(line)
        return lines

    path, report = verify_tampered(big_log, tmp_path, flip)
    assert not report.ok and report.records == 4999
    assert report.error.startswith(f"{path}:5000: record seq 5000: content does not match")


def test_deleted_record_fails_where_it_was(big_log: Path, tmp_path: Path) -> None:
    path, report = verify_tampered(big_log, tmp_path, lambda lines: lines[:2999] + lines[3000:])
    assert not report.ok and report.records == 2999
    assert report.error == (
        f"{path}:3000: record seq 3000: found seq 3001 instead (records removed)"
    )


def test_swapped_records_fail_at_the_first(big_log: Path, tmp_path: Path) -> None:
    def swap(lines: list[bytes]) -> list[bytes]:
        lines[6999], lines[7000] = lines[7000], lines[6999]
        return lines

    path, report = verify_tampered(big_log, tmp_path, swap)
    assert not report.ok and report.records == 6999
    assert report.error.startswith(f"{path}:7000: record seq 7000: found seq 7001 instead")


def test_rewritten_chain_is_caught_by_its_links(big_log: Path, tmp_path: Path) -> None:
    """A forger who edits a record and recomputes its hash still breaks the next link."""
    from sandbox.audit.log import canonical, record_hash

    def forge(lines: list[bytes]) -> list[bytes]:
        record = json.loads(lines[99])
        record.pop("hash")
        record["tenant"] = "someone-else"
        record["hash"] = record_hash(record)
        lines[99] = canonical(record) + b"\n"
        return lines

    path, report = verify_tampered(big_log, tmp_path, forge)
    assert report.error == f"{path}:101: record seq 101: prev does not match the record before it"


def test_verify_and_query_cli(big_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(big_log)]) == 0
    assert f"OK: {N} record(s)" in capsys.readouterr().out
    assert main(["audit", "query", str(big_log), "--kind", "runtime_error"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and json.loads(out[0])["idempotency_key"] == "k-last"
    assert list(query([big_log], tenant="nobody")) == []
    assert len(list(query([big_log], policy="default", since="2000-01-01"))) == N
    assert list(query([big_log], until="2000-01-01T00:00:00Z")) == []


def test_rotation_keeps_one_chain(tmp_path: Path) -> None:
    log = AuditLog(AuditSettings(dir=tmp_path, fsync="never", max_file_bytes=2_000))
    log.start()
    for i in range(300):
        log.submit({"tenant": "t", "kind": "OK", "n": i})
        if i % 10 == 9:
            log.flush()  # files rotate between batches, once past max_file_bytes
        if i == 150:
            log.rotate()
    log.close()
    files = log_files(tmp_path)
    assert len(files) > 10
    report = verify([tmp_path])
    assert report.ok and report.records == 300, report.error
    # A later file alone verifies too (the chain's start is stated, not proven).
    alone = verify(files[3:])
    assert alone.ok and alone.warnings and "starts at seq" in alone.warnings[0]
    # Restarting continues the chain where it stood.
    again = AuditLog(AuditSettings(dir=tmp_path, fsync="always"))
    again.start()
    again.submit({"tenant": "t", "kind": "OK", "n": 300})
    again.close()
    report = verify([tmp_path])
    assert report.ok and report.records == 301
    # Dropping a middle file breaks the chain at the next file's first record.
    files = log_files(tmp_path)
    gone = files[2]
    gone.unlink()
    report = verify([tmp_path])
    assert not report.ok and report.error.startswith(f"{files[3]}:1: ")


def test_digest_only_policy_keeps_the_code_out(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "secret.toml").write_text('audit_code = "digest"\n')
    with running_server(audit={"dir": tmp_path / "log"}, policies={"dir": policies}) as srv:
        with SandboxClient(srv.address, timeout_s=60) as c:
            assert c.execute("'hunter2'", policy="secret").ok
        assert srv.server.audit is not None
        srv.server.audit.flush()
    (record,) = list(query([tmp_path / "log"]))
    assert "code" not in record and record["code_sha256"].startswith("sha256:")
    assert b"hunter2" not in b"".join(p.read_bytes() for p in log_files(tmp_path / "log"))


def test_refusals_are_recorded_in_the_taxonomy_with_the_code_they_refused(
    tmp_path: Path,
) -> None:
    from sandbox.access.tenants import new_api_key
    from sandbox_client import FailureKind

    key, digest = new_api_key()
    (tmp_path / "tenants.toml").write_text(f'[tenants.t]\napi_key_sha256 = ["{digest}"]\n')
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "other.toml").write_text("memory_bytes = 67_108_864\n")
    with running_server(
        audit={"dir": tmp_path / "log"},
        tenants={"file": tmp_path / "tenants.toml"},
        policies={"dir": policies},
    ) as srv:
        with SandboxClient(srv.address, timeout_s=60) as anonymous:
            assert anonymous.execute("1").failure is not None
        with SandboxClient(srv.address, timeout_s=60, api_key=key) as c:
            refused = c.execute("print('x')", policy="other", idempotency_key="k-1")
            assert refused.failure is not None
            assert refused.failure.kind is FailureKind.POLICY_VIOLATION
        assert srv.server.audit is not None
        srv.server.audit.flush()
    unauthenticated, not_allowed = list(query([tmp_path / "log"]))
    kinds = {k.value for k in FailureKind} | {"OK"}
    assert unauthenticated["kind"] == "INVALID_REQUEST" in kinds
    assert unauthenticated["grpc_code"] == "UNAUTHENTICATED"
    assert not_allowed["kind"] == "POLICY_VIOLATION"
    assert not_allowed["grpc_code"] == "PERMISSION_DENIED"
    assert not_allowed["idempotency_key"] == "k-1"
    assert not_allowed["code_sha256"].startswith("sha256:") and not_allowed["tenant"] == "t"


def _serve(audit_dir: Path) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "SANDBOX_LOG__FORMAT": "json",
        "SANDBOX_AUDIT__DIR": str(audit_dir),
        "SANDBOX_AUDIT__FSYNC": "always",
        "SANDBOX_JOURNAL__STATE_DIR": str(audit_dir.parent / "state"),
        "SANDBOX_MONTY__MIN_WORKERS": "2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "serve", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if "address" in event:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, event["address"]
    raise AssertionError("server did not start")


def test_sigkill_mid_write_leaves_a_log_that_verifies(tmp_path: Path) -> None:
    audit_dir = tmp_path / "audit"
    proc, address = _serve(audit_dir)
    acknowledged = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal acknowledged
        with SandboxClient(address, timeout_s=10) as c:
            while not stop.is_set():
                # Large records make a kill inside a write likelier.
                result = c.execute("x = 1\n" + "#" * 20_000 + "\nx", backend="monty")
                if result.ok:
                    acknowledged += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert acknowledged > 50
    report = verify([audit_dir])
    assert report.ok, report.error
    # fsync="always": every acknowledged execution has its record.
    assert report.records >= acknowledged
    # A torn final record (if the kill landed mid-write) is reported, not counted; simulate
    # one for certain, as a kill inside write() leaves it.
    (last,) = log_files(audit_dir)[-1:]
    with open(last, "ab") as f:
        f.write(b'{"code":"half a rec')
    torn = verify([audit_dir])
    assert torn.ok and torn.records == report.records
    assert any("incomplete last record" in w for w in torn.warnings)

    # A restarted server continues the chain in a new file.
    proc, address = _serve(audit_dir)
    try:
        with SandboxClient(address, timeout_s=30) as c:
            assert c.execute("1+1").ok
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    after = verify([audit_dir])
    assert after.ok, after.error
    assert after.records == report.records + 1
    assert len(log_files(audit_dir)) == 2
