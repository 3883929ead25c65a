"""Three real `sandbox serve` replicas on one real PostgreSQL journal: one key sent to all
at once runs once; durable tool runs survive the replica running them being SIGKILLed at
a random point, resumed by another; a replica SIGSTOPped past its lease cannot overwrite
its successor's result; and PostgreSQL stopped mid-load turns keyed calls into retryable
INFRA_UNAVAILABLE (nothing runs unjournaled) and health NOT_SERVING, until it returns."""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from grpc_health.v1 import health_pb2

from sandbox_client import FailureKind, RecoveryPolicy, SandboxClient
from tests.conftest import require
from tests.replicas.cluster import Nginx, Replica, nginx_problem, round_robin_target, start_all

LEASE_S = 2.0
# Retries enough to outlast a replica's restart on a loaded machine (a retry reaches
# another replica at once, unless the one left was killed too).
PATIENT = RecoveryPolicy(
    wait_initial_s=0.2,
    wait_max_s=1.0,
    wait_jitter_s=0.1,
    max_total_s=90,
    max_attempts=40,
    budget_per_kind=RecoveryPolicy().budget_per_kind
    | {FailureKind.INFRA_UNAVAILABLE: 30, FailureKind.SANDBOX_CRASH: 30},
)


@pytest.fixture(scope="module")
def journal_url(postgres: Any) -> str:
    return str(postgres.database())


@pytest.fixture(scope="module")
def replicas(journal_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    root = tmp_path_factory.mktemp("replicas")
    group = [Replica(root / f"r{i}", journal_url, lease_s=LEASE_S) for i in range(3)]
    start_all(group)
    yield group
    for replica in group:
        replica.stop()


@pytest.fixture
def cluster(replicas: list[Replica]) -> list[Replica]:
    """The three replicas, each running (a test before may have killed one)."""
    for replica in replicas:
        if not replica.alive():
            replica.start()
    return replicas


def owner_of(url: str, key: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT owner FROM executions WHERE key = %s", (key,)).fetchone()
    return None if row is None else str(row[0])


def wait_for(condition: Any, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


SLOW = """
import time
time.sleep(2)
"done"
"""


COUNTED = """
import random
n = count()
{"n": n, "r": random.random()}
"""


def test_one_key_sent_to_three_replicas_at_once_runs_once(cluster: list[Replica]) -> None:
    calls: list[int] = []

    def count() -> int:
        calls.append(1)
        time.sleep(0.5)  # the other 49 arrive while it runs
        return len(calls)

    def send(i: int) -> Any:
        with SandboxClient(cluster[i % 3].address, timeout_s=60) as client:
            return client.run_tools(COUNTED, tools={"count": count}, idempotency_key="fifty")

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(send, range(50)))
    assert len(calls) == 1  # the counted side effect: one execution
    assert all(r.ok for r in results), [r.failure for r in results if not r.ok][:3]
    assert len({(r.result_json, r.execution_id) for r in results}) == 1  # 50 identical answers
    assert sum(not r.replayed for r in results) == 1


def test_one_key_through_nginx_runs_once_and_every_replica_serves(
    cluster: list[Replica], journal_url: str, tmp_path: Path
) -> None:
    require(nginx_problem())
    nginx = Nginx(tmp_path / "nginx", [r.address for r in cluster])
    try:
        with SandboxClient(nginx.address, timeout_s=60) as client:
            spread = {client.execute("1", idempotency_key=f"spread-{n}").ok for n in range(9)}

            def send(_: int) -> Any:
                return client.execute(SLOW, idempotency_key="fifty-through-nginx")

            with ThreadPoolExecutor(50) as pool:
                results = list(pool.map(send, range(50)))
    finally:
        nginx.stop()
    assert spread == {True}
    assert all(r.ok for r in results), [r.failure for r in results if not r.ok][:3]
    assert len({(r.execution_id, r.result_json) for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1  # one execution
    with psycopg.connect(journal_url) as conn:
        owners = {
            str(o)
            for (o,) in conn.execute("SELECT owner FROM executions WHERE key LIKE 'spread-%'")
        }
    assert owners == {r.owner for r in cluster}  # nginx spread the keys over all three


def test_a_session_called_through_another_replica_is_refused_naming_its_owner(
    cluster: list[Replica],
) -> None:
    home, other, _ = cluster
    with SandboxClient(home.address, timeout_s=60) as client:
        session = client.create_session()
        assert client.execute("x = 41", session_id=session.session_id).ok
        assert session.session_id.startswith(f"ses_{home.owner[:12]}.")
    with SandboxClient(other.address, timeout_s=60) as client:
        elsewhere = client.execute("x + 1", session_id=session.session_id)
    assert elsewhere.failure is not None
    assert elsewhere.failure.kind == FailureKind.INVALID_REQUEST
    assert home.owner[:12] in elsewhere.failure.message
    assert home.address in elsewhere.failure.message
    with SandboxClient(home.address, timeout_s=60) as client:
        assert client.execute("x + 1", session_id=session.session_id).result == 42


RUN = """
import time
a = step_one(1)
time.sleep(0.5)
b = step_two(a, label="b")
time.sleep(0.5)
c = step_three([a, b])
time.sleep(1.0)
{"a": a, "b": b, "c": c}
"""
EXPECTED = {"a": 11, "b": "b11", "c": 2}
RUNS = int(os.environ.get("SANDBOX_REPLICA_KILL_RUNS", "20"))


class KilledRun:
    """One durable run whose replica (the journal's owner of its key) is SIGKILLed
    `after_s` after the `at_call`th tool answered and once that answer is journaled,
    while the code runs on. (Not while a tool is in the client's hands or its answer on
    the way: that answer never reached the journal, so the retry calls the tool again;
    the client does not remember answers across attempts.)"""

    def __init__(self, cluster: list[Replica], url: str, key: str, at_call: int, after_s: float):
        self.cluster, self.url, self.key = cluster, url, key
        self.at_call, self.after_s = at_call, after_s
        self.calls: dict[str, int] = {}
        self.victims: list[Replica] = []
        self.tools = {
            "step_one": lambda x: self.tool("step_one", 0, x + 10),
            "step_two": lambda x, label="": self.tool("step_two", 1, f"{label}{x}"),
            "step_three": lambda items: self.tool("step_three", 2, len(items)),
        }

    def kill_owner(self) -> None:
        # The point is after the answer reached the journal (on a loaded machine it may
        # take longer than the timer), while the code runs on; not after the run ended.
        deadline = time.monotonic() + 2
        with psycopg.connect(self.url, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT e.owner, e.state, (SELECT count(*) FROM tool_answers a"
                    " WHERE a.key = e.key AND a.seq > 0) FROM executions e WHERE e.key = %s",
                    (self.key,),
                ).fetchone()
                if row is None or row[1] == "done":
                    return  # too late (a starved timer): this run does not count as killed
                if row[2] > self.at_call or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        owner = str(row[0])
        for replica in self.cluster:
            if replica.owner == owner and replica.alive():
                replica.kill()
                self.victims.append(replica)

    def tool(self, name: str, position: int, value: Any) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        if position == self.at_call and not self.victims:
            threading.Timer(self.after_s, self.kill_owner).start()
        return value


@pytest.mark.load  # 20 kills, each waits out a lease: about 100 s
def test_durable_runs_survive_their_replica_being_killed_at_a_random_point(
    cluster: list[Replica], journal_url: str
) -> None:
    target, options = round_robin_target(cluster)
    rng = random.Random(11)
    killed_runs = 0
    restarts: list[threading.Thread] = []
    with SandboxClient(target, timeout_s=60, channel_options=options) as client:
        for n in range(2 * RUNS):
            if killed_runs == RUNS:
                break
            run = KilledRun(
                cluster, journal_url, f"killed-{n}", rng.randrange(3), rng.uniform(0.05, 0.45)
            )
            outcome = client.run(RUN, tools=run.tools, idempotency_key=run.key, recovery=PATIENT)
            assert outcome.ok, (n, outcome.failure)
            assert run.calls == {"step_one": 1, "step_two": 1, "step_three": 1}, n
            assert outcome.result.result == EXPECTED, n
            for restart in restarts:
                restart.join()
            if run.victims:
                killed_runs += 1
                assert len(outcome.attempts) >= 2, n  # the first attempt died with its replica
                # Back while the next run goes on over the other two.
                restarts = [threading.Thread(target=victim.start) for victim in run.victims]
                for restart in restarts:
                    restart.start()
    for restart in restarts:
        restart.join()
    assert killed_runs == RUNS  # RUNS runs lost their replica mid-run (a late kill is not counted)
    with SandboxClient(cluster[0].address, timeout_s=60) as client:
        plain = client.run(RUN, tools={
            "step_one": lambda x: x + 10,
            "step_two": lambda x, label="": f"{label}{x}",
            "step_three": len,
        })  # fmt: skip
    assert plain.ok and plain.result.result == EXPECTED  # as an uninterrupted run


def test_a_replica_paused_past_its_lease_cannot_overwrite_its_successor(
    cluster: list[Replica], journal_url: str
) -> None:
    first, second, third = cluster
    answers: dict[str, Any] = {}

    def send_to_first() -> None:
        with SandboxClient(first.address, timeout_s=60) as client:
            answers["first"] = client.execute(SLOW, idempotency_key="fenced")

    sender = threading.Thread(target=send_to_first)
    sender.start()
    wait_for(lambda: owner_of(journal_url, "fenced") == first.owner)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        with SandboxClient(second.address, timeout_s=60) as client:
            successor = client.execute(SLOW, idempotency_key="fenced")  # takes over
    finally:
        os.kill(first.pid, signal.SIGCONT)
    sender.join(timeout=60)
    assert successor.ok and not successor.replayed
    paused = answers["first"]
    assert not paused.ok and paused.failure.kind == FailureKind.INFRA_UNAVAILABLE
    assert paused.failure.retryable
    with SandboxClient(third.address, timeout_s=60) as client:
        replay = client.execute(SLOW, idempotency_key="fenced")
    assert replay.replayed and replay.execution_id == successor.execution_id
    with psycopg.connect(journal_url) as conn:
        row = conn.execute(
            "SELECT state, owner, generation FROM executions WHERE key = 'fenced'"
        ).fetchone()
    assert row is not None and row[0] == "done" and row[1] == second.owner and row[2] == 2


def test_postgresql_stopped_mid_load_is_retryable_and_served_again_after(
    cluster: list[Replica], postgres: Any
) -> None:
    calls: list[int] = []

    def count() -> int:
        calls.append(1)
        return len(calls)

    with SandboxClient(cluster[0].address, timeout_s=30) as client:
        assert client.run_tools(COUNTED, tools={"count": count}, idempotency_key="before").ok
    # Load on every replica all along: keyed executions, one new key each.
    stop_load = threading.Event()
    kinds: list[FailureKind | None] = []
    retryable: list[bool] = []

    def load(replica: Replica) -> None:
        with SandboxClient(replica.address, timeout_s=30) as client:
            for n in itertools.count():
                if stop_load.is_set():
                    return
                result = client.execute("2 * 21", idempotency_key=f"load-{replica.port}-{n}")
                kinds.append(result.failure.kind if result.failure else None)
                retryable.append(result.ok or bool(result.failure and result.failure.retryable))

    loaders = [threading.Thread(target=load, args=(r,)) for r in cluster]
    for loader in loaders:
        loader.start()
    time.sleep(1)
    postgres.stop()
    try:
        wait_for(
            lambda: all(r.health() == health_pb2.HealthCheckResponse.NOT_SERVING for r in cluster),
            timeout_s=15,
        )
        for n, replica in enumerate(cluster):
            with SandboxClient(replica.address, timeout_s=30) as client:
                refused = client.run_tools(
                    COUNTED, tools={"count": count}, idempotency_key=f"during-{n}"
                )
                plain = client.execute("1 + 1", idempotency_key=f"plain-during-{n}")
            for result in (refused, plain):
                assert result.failure is not None, result
                assert result.failure.kind == FailureKind.INFRA_UNAVAILABLE
                assert result.failure.retryable
        assert len(calls) == 1  # nothing ran while its claim could not be journaled

        target, options = round_robin_target(cluster)
        outcomes: list[Any] = []

        def patient_caller() -> None:
            with SandboxClient(target, timeout_s=30, channel_options=options) as client:
                outcomes.append(
                    client.run(
                        COUNTED,
                        tools={"count": count},
                        idempotency_key="across-outage",
                        recovery=PATIENT,
                    )
                )

        caller = threading.Thread(target=patient_caller)
        caller.start()
        time.sleep(2)
    finally:
        postgres.start()
    caller.join(timeout=90)
    assert outcomes and outcomes[0].ok, outcomes
    assert len(calls) == 2
    wait_for(
        lambda: all(r.health() == health_pb2.HealthCheckResponse.SERVING for r in cluster),
        timeout_s=15,
    )
    for n, replica in enumerate(cluster):
        with SandboxClient(replica.address, timeout_s=30) as client:
            assert client.execute("1 + 1", idempotency_key=f"after-{n}").ok
    stop_load.set()
    for loader in loaders:
        loader.join(timeout=60)
    # The load saw answers before, during and after; and only retryable failures.
    assert None in kinds and FailureKind.INFRA_UNAVAILABLE in kinds
    assert set(kinds) <= {None, FailureKind.INFRA_UNAVAILABLE} and all(retryable)
    last_refusal = len(kinds) - 1 - kinds[::-1].index(FailureKind.INFRA_UNAVAILABLE)
    assert None in kinds[last_refusal:]  # served again under the same load, no restart
