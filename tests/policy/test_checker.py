"""The static checks off the event loop (policy/checker.py): the same findings as an
inline parse, a check over its budget killed and its process replaced, waiters served
one tenant at a time; and through a real server, the sources that once froze it for
every caller are refused INVALID_REQUEST while health checks keep answering."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandbox.policy import static_check
from sandbox.policy.checker import CheckersBusy, CheckOverBudget, StaticChecker
from sandbox_client import FailureKind, SandboxClient
from sandbox_client.protocol.models import Failure
from tests.conftest import ServerThread, running_server

# An f-string of 85,000 placeholders: 255 KB, under the default 256 KiB code cap, and
# 41 s to parse on the machine it was found on.
HUGE_FSTRING = 'f"' + "{x}" * 85_000 + '"'
SOURCES = [
    "import os\nx = 1\n" + "y = 2\n" * 200,
    "from importlib import util\n" + "# pad\n" * 100,
    "x = ().__class__\nimport ctypes\n" + "z = 3\n" * 100,
    "getattr(1, '__subclasses__')\n" + "pass\n" * 200,
    "import os.path, sys, os\nimport json\n" + "eval('1')\n" + "q = 1\n" * 100,
    "def f(:\n" + "pass\n" * 200,  # not Python: no findings, the backend says SYNTAX_ERROR
    "x = 1\n" * 300,
]


@pytest_asyncio.fixture
async def checker() -> AsyncIterator[StaticChecker]:
    pool = StaticChecker(2)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


def all_findings_violation(code: str, denied: frozenset[str]) -> static_check.Violation | None:
    for finding in static_check._all_findings(code)[0]:
        if finding.rule != "import" or static_check._denied(finding.target, denied):
            return finding
    return None


@pytest.mark.parametrize("code", SOURCES)
@pytest.mark.parametrize("denied", [frozenset(), frozenset({"os"}), frozenset({"ctypes", "sys"})])
def test_compact_findings_decide_as_every_finding_does(code: str, denied: frozenset[str]) -> None:
    assert static_check.find_violation(code, denied) == all_findings_violation(code, denied)


async def test_a_process_finds_what_an_inline_parse_finds(checker: StaticChecker) -> None:
    for code in SOURCES:
        assert len(code.encode()) > checker.inline_max_bytes
        found = await checker.findings(code, budget_s=5)
        assert found == static_check.findings(code)


async def test_small_sources_are_checked_inline(checker: StaticChecker) -> None:
    pids = set(checker.pids)
    assert await checker.findings("import os", budget_s=5) == static_check.findings("import os")
    assert set(checker.pids) == pids


async def test_a_check_over_budget_is_killed_replaced_and_remembered(
    checker: StaticChecker,
) -> None:
    before = set(checker.pids)
    started = time.monotonic()
    with pytest.raises(CheckOverBudget):
        await checker.findings(HUGE_FSTRING, budget_s=0.5)
    assert time.monotonic() - started < 2.0
    assert checker.killed == 1
    for _ in range(100):  # the replacement starts in the background
        if len(checker.pids) == 2 and set(checker.pids) != before:
            break
        await asyncio.sleep(0.05)
    assert len(checker.pids) == 2 and len(set(checker.pids) & before) == 1
    gone = (before - set(checker.pids)).pop()
    assert _state(gone) in ("gone", "Z")
    # The same source again is refused at once, and the pool still checks others.
    started = time.monotonic()
    with pytest.raises(CheckOverBudget):
        await checker.findings(HUGE_FSTRING, budget_s=0.5)
    assert time.monotonic() - started < 0.1 and checker.killed == 1
    assert await checker.findings(SOURCES[0], budget_s=5) == static_check.findings(SOURCES[0])


async def test_waiters_give_up_after_their_budget_as_busy() -> None:
    pool = StaticChecker(1)
    await pool.start()
    try:
        slow = asyncio.ensure_future(pool.findings(HUGE_FSTRING, budget_s=3))
        await asyncio.sleep(0.1)
        with pytest.raises(CheckersBusy):
            await pool.findings(SOURCES[0], budget_s=0.3)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        # The cancelled check's process was killed, not handed back mid-parse.
        assert await pool.findings(SOURCES[1], budget_s=5) == static_check.findings(SOURCES[1])
    finally:
        await pool.stop()


async def test_one_tenant_never_holds_every_checker() -> None:
    """Tenant a keeps every checker it may busy with slow sources and queues more; tenant
    b's check is served by the process a may not take, before any of a's finishes."""
    pool = StaticChecker(3)
    await pool.start()
    slow = ["x = 1\n" * 150_000 + f"# {i}\n" for i in range(4)]  # about a second each
    finished: list[tuple[str, float]] = []

    async def check(tenant: str, code: str) -> None:
        await pool.findings(code, budget_s=60, tenant=tenant)
        finished.append((tenant, time.monotonic()))

    try:
        theirs = [asyncio.ensure_future(check("a", code)) for code in slow]
        await asyncio.sleep(0.1)
        assert pool.per_tenant == 2
        await check("b", SOURCES[0])
        assert [t for t, _ in finished] == ["b"], finished
        await asyncio.gather(*theirs)
        assert sorted(t for t, _ in finished) == ["a"] * 4 + ["b"]
    finally:
        await pool.stop()


async def test_waiters_are_served_one_tenant_at_a_time_in_turn() -> None:
    pool = StaticChecker(1)  # one process: a single tenant may hold it all
    await pool.start()
    slow = ["x = 1\n" * 40_000 + f"# {i}\n" for i in range(4)]
    order: list[str] = []

    async def check(tenant: str, code: str) -> None:
        await pool.findings(code, budget_s=60, tenant=tenant)
        order.append(tenant)

    try:
        first = asyncio.ensure_future(check("a", slow[0]))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(check("a", code)) for code in slow[1:]]
        await asyncio.sleep(0.05)
        theirs = asyncio.ensure_future(check("b", SOURCES[0]))
        await asyncio.gather(first, *queued, theirs)
        assert order.index("b") <= 2, order  # after a's running one and one queued, at most
    finally:
        await pool.stop()


async def test_stop_ends_every_process() -> None:
    pool = StaticChecker(2)
    await pool.start()
    pids = pool.pids
    assert len(pids) == 2
    await pool.stop()
    for pid in pids:
        assert _state(pid) in ("gone", "Z")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# -- through a real server -------------------------------------------------------------


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    with running_server() as server:
        yield server


def health_latencies(address: str, stop: threading.Event) -> list[float]:
    """Health checks one after another until `stop`; their latencies, in seconds."""
    latencies: list[float] = []
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            started = time.monotonic()
            stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
            latencies.append(time.monotonic() - started)
            time.sleep(0.01)
    return latencies


@pytest.mark.parametrize(
    "code",
    [
        HUGE_FSTRING,
        'f"' + "{x:>{w}}" * 28_000 + '"',  # nested format specs: 224 KB, 13 s inline
        'f"' + "{x!r}" * 50_000 + '"',  # conversions: 250 KB, 9 s inline
    ],
    ids=["placeholders", "format-specs", "conversions"],
)
def test_a_source_too_slow_to_check_is_refused_and_stalls_no_one(
    srv: ServerThread, code: str
) -> None:
    stop = threading.Event()
    latencies: list[float] = []
    prober = threading.Thread(
        target=lambda: latencies.extend(health_latencies(srv.address, stop)), daemon=True
    )
    prober.start()
    try:
        with SandboxClient(srv.address, timeout_s=60) as client:
            started = time.monotonic()
            with pytest.raises(Exception) as refused:
                client.execute(code).raise_for_failure()
            elapsed = time.monotonic() - started
    finally:
        stop.set()
        prober.join(30)
    failure = getattr(refused.value, "failure", None)
    assert isinstance(failure, Failure), type(refused.value)
    assert failure.kind is FailureKind.INVALID_REQUEST, failure.kind
    assert "too complex to check within 2 s" in failure.message
    assert failure.details.get("field") == "code"
    assert elapsed < 10
    assert latencies and max(latencies) < 1.0, f"a health check took {max(latencies):.2f} s"


def test_large_ordinary_sources_still_run(srv: ServerThread) -> None:
    code = "total = 0\n" + "total += 1\n" * 20_000 + "total"
    with SandboxClient(srv.address, timeout_s=60) as client:
        result = client.execute(code)
        denied = client.execute("import ctypes\n" + "x = 1\n" * 20_000)
    assert result.ok and result.result == 20_000, result.failure
    assert denied.failure is not None and denied.failure.kind is FailureKind.POLICY_VIOLATION
    assert denied.failure.line == 1


def test_the_servers_checker_processes_end_with_it(tmp_path: Path) -> None:
    with running_server() as server:
        checker = server.server.executor.checker
        assert checker is not None
        for _ in range(600):  # started beside the server, not before it serves
            if len(checker.pids) == 3:
                break
            time.sleep(0.05)
        pids = checker.pids
        assert len(pids) == 3
        for pid in pids:
            assert b"sandbox.policy.static_check" in Path(f"/proc/{pid}/cmdline").read_bytes()
            assert os.getpriority(os.PRIO_PROCESS, pid) >= static_check.NICENESS
    for pid in pids:
        assert _state(pid) in ("gone", "Z")
