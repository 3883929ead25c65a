"""Hostile code from other projects' suites (../shared/corpora/hostile), run in real
containers. Judged on what happened, not on whether the code ran: a host marker file
stays unread, no network, the fork bomb meets the pids cap, the disk fill meets the size
cap, runaway output is truncated, nothing persists, and `print(1)` works afterwards."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.backends.container.backend import ContainerBackend
from sandbox_client import ExecutionResult, FailureKind
from tests.backends.container.conftest import LIMITS, MiB, assert_healthy, run
from tests.corpus import read_jsonl, report

pytestmark = pytest.mark.docker

HOSTILE_WALL_MS = 4000
SECRET = "host-secret-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def host_marker() -> Iterator[Path]:
    """A file on the host and a variable in the server's environment that no run may see."""
    path = Path("/tmp") / f"sandbox-host-marker-{secrets.token_hex(4)}"
    path.write_text(SECRET)
    os.environ["SANDBOX_TEST_SECRET_TOKEN"] = SECRET
    yield path
    path.unlink()
    del os.environ["SANDBOX_TEST_SECRET_TOKEN"]


def assert_contained(result: ExecutionResult) -> None:
    seen = result.stdout + result.stderr + (result.result_json or "")
    assert SECRET not in seen
    assert "uid=0(" not in seen and "\nroot\n" not in f"\n{seen}"


def piston(name: str) -> dict[str, Any]:
    (case,) = [c for c in read_jsonl("hostile/piston_exploits.jsonl") if c["name"] == name]
    return case


async def hostile(backend: ContainerBackend, code: str, **limits: int) -> ExecutionResult:
    limits.setdefault("wall_time_ms", HOSTILE_WALL_MS)
    result = await run(backend, code, **limits)
    assert_contained(result)
    return result


async def test_host_marker_stays_unread(backend: ContainerBackend, host_marker: Path) -> None:
    code = f"""
import glob, os
found = [p for root in ('/tmp', '/var/tmp', '/root', '/home', '/workspace', '/work')
         for p in glob.glob(root + '/**/{host_marker.name}', recursive=True)]
print(found, os.environ.get('SANDBOX_TEST_SECRET_TOKEN'))
open({str(host_marker)!r}).read()
"""
    result = await hostile(backend, code)
    assert result.failure is not None and result.failure.exception_type == "FileNotFoundError"
    assert result.stdout == "[] None\n"
    await assert_healthy(backend)


async def test_piston_fork_bomb_meets_the_pids_cap(backend: ContainerBackend) -> None:
    result = await hostile(backend, piston("fork.py")["code"])
    # It spins at the cap until the time limit (under gVisor, 64 forked interpreters may
    # meet the memory cap first).
    assert result.failure is not None
    assert result.failure.kind in (FailureKind.TIMEOUT, FailureKind.MEMORY_LIMIT)
    # The same bomb, counting: forks stop succeeding below the pids cap.
    count = """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as exc:
    print('stopped after', n, exc.errno)
n
"""
    counted = await hostile(backend, count, pids=32, memory_bytes=1024 * MiB)
    assert counted.ok, counted.failure
    assert 0 < counted.result < 32
    report(
        f"container[{backend.runtime}] fork bomb: stopped after {counted.result} forks (pids=32)"
    )
    await assert_healthy(backend)


async def test_piston_disk_fill_meets_the_size_cap(backend: ContainerBackend) -> None:
    # The 218 MB string alone fills the default 256 MiB; with room for it, the file meets
    # the work dir's size cap.
    code = piston("fallocate.py")["code"]
    result = await hostile(backend, code, memory_bytes=768 * MiB)
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR, failure
    assert failure.exception_type == "OSError"
    assert "No space left" in failure.message or "too large" in failure.message
    in_memory = await hostile(backend, code)
    assert in_memory.failure is not None
    assert in_memory.failure.kind in (FailureKind.MEMORY_LIMIT, FailureKind.RUNTIME_ERROR)
    # Chunked, within memory: stops at the cap, not at the host's disk.
    chunked = """
written = 0
try:
    with open('fill', 'wb') as f:
        while True:
            f.write(b'x' * 2**20)
            written += 2**20
except OSError as exc:
    print(exc.errno)
written
"""
    filled = await hostile(backend, chunked)
    assert filled.ok and filled.stdout.strip() in ("27", "28")  # EFBIG, ENOSPC
    assert filled.result <= LIMITS.disk_bytes
    await assert_healthy(backend)


async def test_piston_file_persistence(backend: ContainerBackend) -> None:
    code = piston("file_persistance.py")["code"]
    first = await hostile(backend, code)
    second = await hostile(backend, code)
    assert "exists" not in first.stdout and "exists" not in second.stdout
    # /run/lock is on the read-only root: the attempt is named.
    assert second.failure is not None and second.failure.kind is FailureKind.POLICY_VIOLATION
    await assert_healthy(backend)


async def test_piston_runaway_output(backend: ContainerBackend) -> None:
    result = await hostile(backend, piston("runaway_output.py")["code"], output_bytes=64 * 1024)
    assert result.failure is not None and result.failure.kind is FailureKind.OUTPUT_LIMIT
    assert result.stdout_truncated and len(result.stdout.encode()) <= 64 * 1024
    await assert_healthy(backend)


async def test_piston_network(backend: ContainerBackend) -> None:
    result = await hostile(backend, piston("network.py")["code"])
    assert result.failure is not None and result.failure.kind is FailureKind.POLICY_VIOLATION
    await assert_healthy(backend)


async def test_piston_parallel_requests(backend: ContainerBackend) -> None:
    assert piston("multi_request.py")["run_inside_sandbox"] is False  # a pattern, not code
    codes = [f"import time\ntime.sleep(0.2)\nprint('Request #{i}')" for i in range(5)]
    results = await asyncio.gather(*(hostile(backend, code) for code in codes))
    assert [r.stdout for r in results] == [f"Request #{i}\n" for i in range(5)]


def llm_sandbox_cases() -> list[dict[str, Any]]:
    return read_jsonl("hostile/llm_sandbox_attack_scenarios.jsonl")


async def test_llm_sandbox_attack_scenarios(backend: ContainerBackend, host_marker: Path) -> None:
    cases = llm_sandbox_cases()
    assert len(cases) == 17
    outcomes: dict[str, str] = {}
    for case in cases:
        result = await hostile(backend, case["code"])
        kind = result.failure.kind.value if result.failure else "ok"
        outcomes[case["name"]] = kind
        if case["attack_type"] in ("network", "data_exfiltration") and "Port" not in case["name"]:
            assert result.failure is not None, case["name"]
        if case["name"] == "Port Scanning":
            assert "is open" not in result.stdout
        if case["name"] == "File Deletion Attack":
            assert result.failure is not None
            assert result.failure.kind is FailureKind.POLICY_VIOLATION
    # What one attack wrote is gone for the next run.
    leftover = await hostile(backend, "import os\nos.path.exists('/tmp/malicious.py')")
    assert leftover.result is False
    summary = ", ".join(f"{name}: {kind}" for name, kind in outcomes.items())
    report(f"container[{backend.runtime}] llm-sandbox attacks (17, all contained): {summary}")
    await assert_healthy(backend)
