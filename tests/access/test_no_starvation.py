"""The acceptance tests of "no request may stall or starve others", with two tenants on
one real server (`sandbox serve`, a child process, so that no client shares its GIL):

- while tenant `a` sends the worst requests we could construct (f-strings that take tens
  of seconds to parse, many large sources at once, deep nesting, code that spins until
  its time limit, tool calls it never answers, sessions up to its quota), tenant `b`'s
  `print(1)` keeps a p99 under 100 ms and health checks never stall;
- with every Monty worker and session `a`'s quotas allow held, `b` is still served.

Both are time-boxed and send traffic only to 127.0.0.1. Run them alone with
`pytest -m load` (they are part of the default run too). The container variant of the
second is tests/backends/container/test_container_quotas.py."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandbox.access.tenants import new_api_key
from sandbox_client import ExecutionResult, FailureKind, RequestRefused, SandboxClient
from sandbox_client.protocol.models import Failure
from tests.conftest import terminate
from tests.edge.test_run_stream import RawRun, value_answer

pytestmark = pytest.mark.load

KEYS = {name: new_api_key() for name in ("a", "b")}
ATTACK_S = 12.0
P99_BUDGET_S = 0.100
HEALTH_BUDGET_S = 0.250
MiB = 1024 * 1024


class ServeProcess:
    """`sandbox serve` as a child process with the two tenants."""

    def __init__(self, tmp: Path, *, settings: str, tenants: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        (tmp / "tenants.toml").write_text(tenants)
        config = tmp / "sandbox.toml"
        config.write_text(
            f"[server]\nport = {self.port}\n[log]\nformat = 'json'\nlevel = 'warning'\n"
            f"[tenants]\nfile = '{tmp / 'tenants.toml'}'\n"
            f"[journal]\nstate_dir = '{tmp / 'state'}'\n" + textwrap.dedent(settings)
        )
        self.address = f"127.0.0.1:{self.port}"
        self.log = tmp / "server.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sandbox", "serve", "--config", str(config)],
                stderr=log,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with SandboxClient(self.address, api_key=KEYS["b"][0], timeout_s=5) as client:
                if client.execute("1").ok:
                    return
            time.sleep(0.2)  # not listening yet
        raise AssertionError(f"the server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        terminate(self.proc, timeout_s=30)


def tenants_file(a_quota: str) -> str:
    return (
        textwrap.dedent(f"""
            [tenants.a]
            api_key_sha256 = ["{KEYS["a"][1]}"]
            rate_per_s = 500
            burst = 500
        """)
        + textwrap.dedent(a_quota)
        + textwrap.dedent(f"""
            [tenants.b]
            api_key_sha256 = ["{KEYS["b"][1]}"]
            rate_per_s = 500
            burst = 500
        """)
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the worst requests ------------------------------------------------------------------


def _unique(code: str, n: int) -> str:
    return f"{code}\n# {n} {os.getpid()}"  # defeats the server's cache of checked sources


ATTACKS: dict[str, str] = {
    # 85,000 placeholders, 255 KB: 41 s to parse on the loop before the fix.
    "fstring": 'f"' + "{x}" * 85_000 + '"',
    "format-specs": 'f"' + "{x:>{w}}" * 28_000 + '"',
    # Large ordinary sources: checked, then parsed by Monty.
    "large": "x = 0\n" + "x += 1\n" * 36_000 + "x",
    # As deep as the parsers take, and one level more.
    "nested": "(" * 199 + "1" + ")" * 199,
    "nested-over": "[" * 1_000 + "]" * 1_000,
    # Spins until its wall-time budget.
    "spin": "while True:\n    pass",
}


# The mixes of a's attack: one thread per entry, sending that request again and again.
# "everything" also holds a's sessions and two tool runs it never answers first;
# "sources" spends all of a's concurrency on sources that are slow to check or parse.
MIXES: dict[str, tuple[str, ...]] = {
    "everything": (
        *("fstring", "fstring", "format-specs"),
        *("large", "large", "large"),
        *("nested", "nested-over", "spin"),
    ),
    "sources": ("fstring", "format-specs", "large", "large", "large", "large"),
}


def _attack_thread(address: str, key: str, kind: str, until: float, counts: dict[str, int]) -> None:
    n = 0
    with SandboxClient(address, api_key=key, timeout_s=60) as client:
        while time.monotonic() < until:
            n += 1
            try:
                result = client.execute(_unique(ATTACKS[kind], n))
            except Exception as exc:  # a client error is counted, not fatal to the attack
                key = type(exc).__name__
            else:
                failure = result.failure
                key = failure.kind.value if failure else "OK"
                if failure is not None and failure.kind is FailureKind.THROTTLED:
                    time.sleep(min(0.05, failure.retry_after_ms / 1000))
            counts[f"{kind}:{key}"] = counts.get(f"{kind}:{key}", 0) + 1


def _silent_tool_runs(key: str, address: str, runs: list[RawRun]) -> None:
    """Two tool runs whose calls are never answered, open before anything else and held
    until the attack ends (the policy's tool wait, 60 s, is longer than the attack)."""
    metadata = (("authorization", f"Bearer {key}"),)
    for _ in range(2):
        run = RawRun(address, "lookup(1)", ["lookup"], metadata=metadata, timeout_s=ATTACK_S + 60)
        runs.append(run.__enter__())
    deadline = time.monotonic() + 10
    while sum(len(r.calls) for r in runs) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)


def _hold_sessions(address: str, key: str, counts: dict[str, int]) -> list[str]:
    """As many sessions as a's quota allows (each holds a Monty worker while open), and
    one more, which must be THROTTLED."""
    opened = []
    with SandboxClient(address, api_key=key, timeout_s=60) as client:
        while True:
            try:
                opened.append(client.create_session().session_id)
            except RequestRefused as refused:
                counts[f"session:{refused.failure.kind.value}"] = 1
                break
    counts["sessions"] = len(opened)
    return opened


def attack(address: str, key: str, mix: str, seconds: float, started: Any, out: Any) -> None:
    """Tenant a's worst (`key` is its API key; `mix`, one of MIXES), from its own process,
    for `seconds`; sets `started` once under way, then puts counts of outcomes to `out`."""
    counts: dict[str, int] = {}
    silent: list[RawRun] = []
    if mix == "everything":
        _hold_sessions(address, key, counts)
        _silent_tool_runs(key, address, silent)
    started.set()
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_attack_thread, args=(address, key, kind, until, counts))
        for kind in MIXES[mix]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 90)
    counts["silent-runs-waiting"] = sum(
        1 for r in silent if len(r.calls) == 1 and r.result is None and r.error is None
    )
    for run in silent:
        run.__exit__()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # What the attacker's own process cost this machine (a real one runs elsewhere).
    counts["attacker-cpu-s"] = round(usage.ru_utime + usage.ru_stime)
    out.put(json.dumps(counts))


def probe_health(address: str, until: float, latencies: list[float]) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < until:
            started = time.monotonic()
            stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    srv = ServeProcess(
        tmp_path_factory.mktemp("no-starvation"),
        settings="""
            [monty]
            min_workers = 4
            max_workers = 10
            warm_sessions = 2
        """,
        # a's share: 3 executions and 2 sessions, 5 of the 10 workers. CPU is the other
        # bound: on 2 cores, 4 executions that each spin a core (a's right under its
        # quota) took b's p99 to 145 ms once, with the machine shared; 3 leaves a core's
        # worth of room (sizing a tenant's max_concurrent below the cores it may fill).
        tenants=tenants_file("max_concurrent = 3\nmax_sessions = 2\n"),
    )
    try:
        yield srv
    finally:
        srv.stop()


def measure_print(address: str, seconds: float) -> tuple[list[float], list[Failure | None]]:
    """Tenant b's `print(1)` one after another for `seconds`: latencies and failures."""
    latencies: list[float] = []
    failures: list[Failure | None] = []
    until = time.monotonic() + seconds
    with SandboxClient(address, api_key=KEYS["b"][0], timeout_s=30) as client:
        client.execute("print(1)")
        while time.monotonic() < until:
            started = time.monotonic()
            result = client.execute("print(1)")
            latencies.append(time.monotonic() - started)
            if not (result.ok and result.stdout == "1\n"):
                failures.append(result.failure)
            time.sleep(0.01)
    return latencies, failures


@pytest.mark.parametrize("mix", list(MIXES))
def test_the_worst_of_one_tenant_leaves_anothers_print_fast(server: ServeProcess, mix: str) -> None:
    # The same measurement with nothing else running first: on a machine whose own
    # scheduling noise exceeds half the budget, the budget is twice that, and the report
    # says so (never silently).
    idle, _ = measure_print(server.address, 3.0)
    idle_p99 = percentile(idle, 0.99)
    budget = P99_BUDGET_S if idle_p99 < P99_BUDGET_S / 2 else 2 * idle_p99
    spawn = multiprocessing.get_context("spawn")
    out: Any = spawn.Queue()
    started: Any = spawn.Event()
    attacker = spawn.Process(
        target=attack,
        args=(server.address, KEYS["a"][0], mix, ATTACK_S, started, out),
        daemon=True,
    )
    attacker.start()
    assert started.wait(60), "the attack did not start"
    time.sleep(1.0)  # under way: checkers busy, workers held, tool runs waiting
    health: list[float] = []
    until = time.monotonic() + ATTACK_S - 2.0
    prober = threading.Thread(target=probe_health, args=(server.address, until, health))
    prober.start()
    latencies, failures = measure_print(server.address, ATTACK_S - 2.0)
    prober.join(60)
    counts = json.loads(out.get(timeout=ATTACK_S + 120))
    attacker.join(30)
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    report = (
        f"b's print(1) under attack ({mix}): {len(latencies)} runs, p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms (idle p99 "
        f"{idle_p99 * 1000:.1f} ms, budget {budget * 1000:.0f} ms); health: {len(health)} "
        f"checks, max {max(health) * 1000:.1f} ms; a's requests: {counts}"
    )
    print(report)
    # The attack really ran: slow sources refused, tool runs left waiting, sessions held.
    # (Which slow source gets through admission first depends on the machine's timing.)
    refused = counts.get("fstring:INVALID_REQUEST", 0) + counts.get(
        "format-specs:INVALID_REQUEST", 0
    )
    assert refused >= 1, report
    if mix == "everything":
        assert counts["silent-runs-waiting"] == 2, report
        assert counts["sessions"] == 2 and counts["session:THROTTLED"] == 1, report
    else:
        assert counts.get("large:OK", 0) >= 2, report
    assert not failures, failures[:3]
    assert len(latencies) >= 200, report
    assert p99 < budget, report
    assert max(health) < HEALTH_BUDGET_S, report


def test_with_everything_one_tenants_quotas_allow_held_another_is_served(
    tmp_path: Path,
) -> None:
    srv = ServeProcess(
        tmp_path,
        settings="""
            [monty]
            min_workers = 2
            max_workers = 8
            warm_sessions = 1
            checkout_timeout_s = 5
        """,
        # a's share: 3 executions and 3 sessions, 6 of the 8 workers.
        tenants=tenants_file(
            f"max_concurrent = 3\nmax_sessions = 3\nsession_memory_bytes = {1024 * MiB}\n"
        ),
    )
    metadata = (("authorization", f"Bearer {KEYS['a'][0]}"),)
    held: list[RawRun] = []
    try:
        with SandboxClient(srv.address, api_key=KEYS["a"][0], timeout_s=30) as a:
            sessions = [a.create_session() for _ in range(3)]
            # a is at its session quota: one more is THROTTLED, naming it.
            with pytest.raises(RequestRefused) as more_sessions:
                a.create_session()
            assert more_sessions.value.failure.details["quota"] == "max_sessions"
            for _ in range(3):
                held.append(
                    RawRun(srv.address, "lookup(1)", ["lookup"], metadata=metadata).__enter__()
                )
            deadline = time.monotonic() + 20
            while sum(len(r.calls) for r in held) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [len(r.calls) for r in held] == [1, 1, 1]  # each holds a worker, waiting
            # And at its concurrency: one more execution is THROTTLED, naming it.
            more_runs = a.execute("1")
            assert more_runs.failure is not None
            assert more_runs.failure.kind is FailureKind.THROTTLED
            assert more_runs.failure.details["quota"] == "max_concurrent"

            with SandboxClient(srv.address, api_key=KEYS["b"][0], timeout_s=30) as b:
                for _ in range(5):
                    started = time.monotonic()
                    result = b.execute("print(1)")
                    assert result.ok and result.stdout == "1\n", result.failure
                    assert time.monotonic() - started < 2.0
                *_, streamed = b.execute_stream("print('streamed')")
                assert isinstance(streamed, ExecutionResult) and streamed.ok, streamed
                session = b.create_session()
                b.execute("n = 41", session_id=session.session_id)
                assert b.execute("n + 1", session_id=session.session_id).result == 42
                b.close_session(session.session_id)
                tool_run = b.run_tools("double(21)", tools={"double": lambda x: 2 * x})
                assert tool_run.ok and tool_run.result == 42, tool_run.failure
            for session in sessions:
                a.close_session(session.session_id)
    finally:
        for run in held:
            run.__exit__()
        srv.stop()


def test_a_tool_run_left_unanswered_frees_its_worker_for_others(tmp_path: Path) -> None:
    """The wait has a deadline: a's silent runs end on their own and b gets the worker."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "default.toml").write_text("tool_wait_ms = 1000\n")
    srv = ServeProcess(
        tmp_path,
        settings=f"""
            [monty]
            min_workers = 1
            max_workers = 2
            warm_sessions = 0
            checkout_timeout_s = 10
            [policies]
            dir = '{tmp_path / "policies"}'
        """,
        tenants=tenants_file("max_concurrent = 4\n"),
    )
    metadata = (("authorization", f"Bearer {KEYS['a'][0]}"),)
    try:
        code = "while True:\n    try:\n        lookup(1)\n    except TimeoutError:\n        pass"
        runs = [
            RawRun(srv.address, code, ["lookup"], metadata=metadata).__enter__() for _ in range(2)
        ]
        for run in runs:
            run.wait()
            assert run.result is not None and run.result.failure is not None, run.error
            # One wait of 1 s, then every later call fails at once and the loop runs into
            # a limit (its host calls or its wall time): the run ends, it does not hold
            # the worker.
            assert run.result.failure.details.get("limit") in ("host_calls", "wall_time_ms")
            assert len(run.calls) == 1
        with SandboxClient(srv.address, api_key=KEYS["b"][0], timeout_s=30) as b:
            assert b.execute("print(1)").ok
            answered = RawRun(
                srv.address,
                "lookup(1)",
                ["lookup"],
                metadata=(("authorization", f"Bearer {KEYS['b'][0]}"),),
                answer=value_answer("7"),
            )
            with answered:
                answered.wait()
            assert answered.result is not None and answered.result.result == 7
    finally:
        srv.stop()
