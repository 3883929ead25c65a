"""Audit across replicas: each replica writes its own hash chain (its own audit.dir, all
signed with the key they share by configuration), and `sandbox audit verify` over the
directory holding them checks every chain on its own and names the replica of each;
`sandbox audit query` says which replica each record came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.audit.log import AuditLog, log_files, replica_chains
from sandbox.cli.commands import main
from sandbox.config import AuditSettings
from tests.audit.test_audit_keyed import rewrite_chain

KEY = "replicas-share-this-audit-key"


def replica_log(directory: Path, tenant: str, n: int) -> None:
    log = AuditLog(
        AuditSettings(dir=directory, fsync="never", key=KEY),  # type: ignore[arg-type]
        default_key_file=directory.parent / "unused.key",
    )
    log.start()
    for i in range(n):
        log.submit({"tenant": tenant, "kind": "OK", "n": i})
    log.flush()
    log.close()


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "audit"
    replica_log(root / "replica-a", "ta", 30)
    replica_log(root / "replica-b", "tb", 20)
    key_file = tmp_path / "audit.key"
    key_file.write_text(KEY)
    return root, key_file


def test_verify_checks_each_replicas_chain_and_names_it(
    fleet: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, key_file = fleet
    assert set(replica_chains(root)) == {"replica-a", "replica-b"}
    assert main(["audit", "verify", str(root), "--key-file", str(key_file)]) == 0
    out = capsys.readouterr().out
    assert "replica replica-a: OK: 30 record(s)" in out
    assert "replica replica-b: OK: 20 record(s)" in out and "MACs checked" in out
    assert "2 of 2 replica chain(s) OK" in out


def test_a_forged_record_fails_only_its_replicas_chain(
    fleet: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, key_file = fleet
    rewrite_chain(log_files(root / "replica-b")[0], edit_line=5)
    assert main(["audit", "verify", str(root), "--key-file", str(key_file)]) == 1
    out = capsys.readouterr().out
    assert "replica replica-a: OK" in out
    assert "replica replica-b: FAILED" in out and "MAC does not match" in out
    assert "1 of 2 replica chain(s) OK" in out


def test_one_chain_options_are_refused_for_a_directory_of_chains(
    fleet: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = fleet
    assert main(["audit", "verify", str(root), "--start", "3:sha256:00"]) == 2
    assert "give that replica's directory" in capsys.readouterr().err


def test_query_says_which_replica_each_record_came_from(
    fleet: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = fleet
    assert main(["audit", "query", str(root)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 50
    assert {(r["replica"], r["tenant"]) for r in records} == {
        ("replica-a", "ta"),
        ("replica-b", "tb"),
    }
