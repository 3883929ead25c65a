"""Memory the server holds for a Monty run stays near flat, whatever the code makes it
record: denied calls with 10 MB arguments, as many as it likes."""

from __future__ import annotations

import time
from pathlib import Path

from sandbox_client import FailureKind, SandboxClient

MiB = 1024 * 1024

# 20 denied opens of a 10 MB path each, caught, then one left uncaught.
MANY_BIG_DENIALS = (
    "for i in range(20):\n"
    "    try:\n"
    "        open('x' * 10_000_000 + str(i))\n"
    "    except OSError:\n"
    "        pass\n"
    "open('y' * 10_000_000)"
)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_denied_calls_with_huge_arguments_hold_no_memory(client: SandboxClient) -> None:
    first = client.execute(MANY_BIG_DENIALS, backend="monty")  # warm-up: pools, caches
    assert first.failure is not None and first.failure.kind is FailureKind.POLICY_VIOLATION
    before = rss_bytes()
    started = time.monotonic()
    for _ in range(2):  # bounded: 42 denials of 10 MB, some seconds each run
        result = client.execute(MANY_BIG_DENIALS, backend="monty")
        failure = result.failure
        assert failure is not None and failure.kind is FailureKind.POLICY_VIOLATION
        assert len(failure.details["attempted"]) <= 200
        assert time.monotonic() - started < 60
    grown = rss_bytes() - before
    # Before the bound, the server held each run's arguments whole: +572 MiB over these
    # two runs. What is left is the allocator keeping a few 10 MB buffers it passed
    # through (measured 0 to 70 MiB, depending on what else the process did).
    assert grown < 160 * MiB, f"the server grew {grown / MiB:.0f} MiB"
