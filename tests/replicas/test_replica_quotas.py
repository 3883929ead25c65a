"""Tenants' quotas across three real replicas on one PostgreSQL journal: max_concurrent
and the rate hold for the deployment, not per replica, and a replica SIGKILLed while
holding slots gives them back within one lease period."""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from sandbox.access.tenants import new_api_key
from sandbox_client import ExecutionResult, FailureKind, SandboxClient
from tests.replicas.cluster import Replica, start_all

LEASE_S = 2.0
KEYS = {"c": new_api_key(), "r": new_api_key()}
TENANTS = textwrap.dedent(f"""
    [tenants.c]
    api_key_sha256 = ["{KEYS["c"][1]}"]
    max_concurrent = 3
    rate_per_s = 1000
    burst = 1000

    [tenants.r]
    api_key_sha256 = ["{KEYS["r"][1]}"]
    rate_per_s = 2
    burst = 4
    max_concurrent = 50
""")
TIMED = """
import time
start = time.time()
time.sleep({sleep_s})
[start, time.time()]
"""


@pytest.fixture(scope="module")
def journal_url(postgres: Any) -> str:
    return str(postgres.database())


@pytest.fixture(scope="module")
def replicas(journal_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    root = tmp_path_factory.mktemp("quota-replicas")
    (root / "tenants.toml").write_text(TENANTS)
    extra = f"[tenants]\nfile = '{root / 'tenants.toml'}'\n"
    group = [Replica(root / f"r{i}", journal_url, lease_s=LEASE_S, extra=extra) for i in range(3)]
    start_all(group)
    yield group
    for replica in group:
        replica.stop()


def execute(replica: Replica, tenant: str, code: str) -> ExecutionResult:
    with SandboxClient(replica.address, timeout_s=60, api_key=KEYS[tenant][0]) as client:
        return client.execute(code)


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_max_concurrent_holds_across_replicas(replicas: list[Replica], journal_url: str) -> None:
    slots_seen: list[int] = []
    done = threading.Event()

    def watch_slots() -> None:
        with psycopg.connect(journal_url) as conn:
            while not done.is_set():
                (n,) = conn.execute(
                    "SELECT count(*) FROM quota_slots WHERE tenant = 'c' AND lease_until > now()"
                ).fetchone() or (0,)
                slots_seen.append(int(n))
                time.sleep(0.02)

    watcher = threading.Thread(target=watch_slots)
    watcher.start()
    code = TIMED.format(sleep_s=1.0)
    try:
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda i: execute(replicas[i % 3], "c", code), range(24)))
    finally:
        done.set()
        watcher.join()
    admitted = [r for r in results if r.ok]
    throttled = [r for r in results if r.failure and r.failure.kind == FailureKind.THROTTLED]
    assert len(admitted) + len(throttled) == len(results), [r.failure for r in results]
    assert throttled and admitted
    # The executions themselves say when they ran: never more than 3 at once, and 3.
    assert peak_overlap([tuple(r.result) for r in admitted]) == 3
    assert max(slots_seen) == 3


def test_the_rate_holds_across_replicas(replicas: list[Replica]) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: execute(replicas[i % 3], "r", "1"), range(12)))
    elapsed = time.monotonic() - started
    admitted = sum(r.ok for r in results)
    refused = [r for r in results if not r.ok]
    assert all(r.failure is not None and r.failure.kind == FailureKind.THROTTLED for r in refused)
    # burst 4, refilled at 2/s: three replicas with a bucket each would admit 12.
    assert 4 <= admitted <= 4 + int(2 * elapsed) + 1, (admitted, elapsed)


def test_a_killed_replicas_slots_come_back_within_one_lease(replicas: list[Replica]) -> None:
    holder, other, _ = replicas
    code = TIMED.format(sleep_s=8.0)  # within the default 10 s wall time
    holders = [threading.Thread(target=execute, args=(holder, "c", code)) for _ in range(3)]
    for t in holders:
        t.start()
    time.sleep(1.5)  # the three slots are held by `holder`
    crowded = execute(other, "c", "1")
    assert crowded.failure is not None and crowded.failure.kind == FailureKind.THROTTLED
    holder.kill()
    killed_at = time.monotonic()
    while True:
        result = execute(other, "c", "1")
        if result.ok:
            break
        assert result.failure is not None and result.failure.kind == FailureKind.THROTTLED
        time.sleep(0.1)
    back_after_s = time.monotonic() - killed_at
    assert back_after_s <= LEASE_S + 1.0, back_after_s
    for t in holders:
        t.join(timeout=30)
    holder.start()
