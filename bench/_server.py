"""Starts `sandbox serve` as a separate process for benchmarks, and reads its RSS."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class ServerProcess:
    address: str
    pid: int

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


@contextmanager
def sandbox_server(*settings: str) -> Iterator[ServerProcess]:
    """`settings`: "section.field=value" each, as SANDBOX_SECTION__FIELD in the server's
    environment."""
    env = {**os.environ, "SANDBOX_LOG__FORMAT": "json", "SANDBOX_LOG__LEVEL": "info"}
    # A journal of its own: the user's state directory is shared by every server and
    # bench run on the machine, and a key one of them recorded is not this run's.
    state_dir = tempfile.mkdtemp(prefix="sandbox-bench-")
    env.setdefault("SANDBOX_JOURNAL__STATE_DIR", state_dir)
    for setting in settings:
        key, _, value = setting.partition("=")
        env[f"SANDBOX_{key.replace('.', '__').upper()}"] = value
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "serve", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        # The first line with an address says it serves (a journal may log before it).
        address = ""
        while not address:
            address = json.loads(proc.stderr.readline()).get("address", "")
        # Keep reading the server's log, or a full pipe would stall it mid-benchmark.
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        yield ServerProcess(address=address, pid=proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(state_dir, ignore_errors=True)


def percentiles(samples_s: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    ordered = sorted(samples_s)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 * 1000, p99 * 1000


@contextmanager
def floor_server(loop_kind: str, workers: int) -> Iterator[str]:
    """bench/_floor_server.py in its own process; yields its address."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._floor_server", loop_kind, str(workers)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
