"""A policy's mounts reach Monty code: the files under them and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_client import FailureKind, SandboxClient
from tests.conftest import ServerThread, running_server


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Path]]:
    root = tmp_path_factory.mktemp("mounts")
    data = root / "data"
    data.mkdir()
    (data / "notes.txt").write_text("hello from the host\n")
    policies = root / "policies"
    policies.mkdir()
    (policies / "reader.toml").write_text(
        f'[[mounts]]\nhost_path = "{data}"\nguest_path = "/data"\nmode = "ro"\n'
    )
    with running_server(policies={"dir": policies}) as server:
        yield server, data


def test_code_reads_a_mounted_file(mounted: tuple[ServerThread, Path]) -> None:
    server, _ = mounted
    with SandboxClient(server.address) as client:
        result = client.execute(
            "open('/data/notes.txt').read().strip()", backend="monty", policy="reader"
        )
    assert result.ok, result.failure
    assert result.result == "hello from the host"


def test_read_only_mount_refuses_writes(mounted: tuple[ServerThread, Path]) -> None:
    server, data = mounted
    with SandboxClient(server.address) as client:
        result = client.execute(
            "open('/data/new.txt', 'w').write('x')", backend="monty", policy="reader"
        )
    assert not result.ok and result.failure is not None
    assert not (data / "new.txt").exists()


def test_paths_outside_the_mount_stay_denied(mounted: tuple[ServerThread, Path]) -> None:
    server, _ = mounted
    with SandboxClient(server.address) as client:
        result = client.execute("open('/etc/passwd').read()", backend="monty", policy="reader")
        escape = client.execute(
            "open('/data/../etc/passwd').read()", backend="monty", policy="reader"
        )
    assert result.failure is not None and result.failure.kind is FailureKind.POLICY_VIOLATION
    assert escape.failure is not None and "root:" not in escape.stdout


def test_policies_without_mounts_see_no_files(mounted: tuple[ServerThread, Path]) -> None:
    server, _ = mounted
    with SandboxClient(server.address) as client:
        result = client.execute("open('/data/notes.txt').read()", backend="monty")
    assert result.failure is not None and result.failure.kind is FailureKind.POLICY_VIOLATION
