"""run() against a real server on loopback with real Monty workers: one test per action,
and fault injection (workers killed, the server stopped mid-run and restarted)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    FAST,
    MiB,
    ServerThread,
    container_enabled,
    kill_monty_workers,
    running_server,
)

from sandbox.access.tenants import new_api_key
from sandbox_client import (
    AsyncSandboxClient,
    Backend,
    EscalationRequired,
    Failure,
    FailureKind,
    Limits,
    SandboxClient,
)
from sandbox_client.recovery import Abort, ApprovePolicy, Escalation, RecoveryAction

A = RecoveryAction
K = FailureKind
NEEDS_300MB = "s = 'a' * (300 * 1024 * 1024)\nlen(s)"


def actions(outcome_attempts: tuple[object, ...]) -> list[tuple[FailureKind | None, A | None]]:
    return [(a.failure_kind, a.action) for a in outcome_attempts]  # type: ignore[attr-defined]


# -- RETRY -------------------------------------------------------------------------


def test_killed_worker_is_retried_and_succeeds(client: SandboxClient) -> None:
    killer = threading.Timer(0.5, kill_monty_workers)
    killer.start()
    outcome = client.run("import time\ntime.sleep(1.5)\n'done'", backend="monty", recovery=FAST)
    killer.join()
    assert outcome.status == "succeeded", outcome.attempts
    assert outcome.result.result == "done"
    first, *_, last = outcome.attempts
    assert (first.failure_kind, first.action) == (K.SANDBOX_CRASH, A.RETRY)
    assert first.delay_s > 0
    # The crash came back as a result of a run, so the retry is a new execution (new key).
    assert last.idempotency_key != first.idempotency_key
    assert last.code_sha256 == first.code_sha256


def test_busy_pool_waits_at_least_retry_after_ms() -> None:
    """A real server whose one Monty worker is held: the pool answers INFRA_UNAVAILABLE
    with retry_after_ms=1000, and run() waits at least that before trying again."""
    with (
        running_server(
            monty={"min_workers": 1, "max_workers": 1, "checkout_timeout_s": 0.2}
        ) as srv,
        SandboxClient(srv.address) as c,
    ):
        holder = threading.Thread(
            target=c.execute, args=("import time\ntime.sleep(1.2)\n1",), daemon=True
        )
        holder.start()
        time.sleep(0.2)
        outcome = c.run("1 + 1", recovery=FAST)
        holder.join()
    assert outcome.result.result == 2
    first = outcome.attempts[0]
    assert first.failure_kind is K.INFRA_UNAVAILABLE
    assert first.action is A.RETRY
    assert first.delay_s >= 1.0  # the server's retry_after_ms, not FAST's 0.05 s backoff


def test_throttled_answer_waits_at_least_retry_after_ms(tmp_path: Path) -> None:
    """A tenant allowed one request per second: the second is THROTTLED with
    retry_after_ms, and run() waits at least that long before asking again."""
    key, digest = new_api_key()
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        f'[tenants.slow]\napi_key_sha256 = ["{digest}"]\nrate_per_s = 1\nburst = 1\n'
    )
    with (
        running_server(tenants={"file": tenants}) as srv,
        SandboxClient(srv.address, api_key=key) as c,
    ):
        assert c.execute("1").ok  # spends the one token
        outcome = c.run("1 + 1", recovery=FAST)
    assert outcome.result.result == 2
    first = outcome.attempts[0]
    assert first.failure_kind is K.THROTTLED
    assert first.action is A.WAIT
    assert first.delay_s >= 0.5  # the server's retry_after_ms, not FAST's 0.05 s backoff
    assert first.idempotency_key == outcome.attempts[-1].idempotency_key  # nothing ran


# -- FALLBACK ---------------------------------------------------------------------


@pytest.mark.docker
def test_auto_falls_back_to_the_container_on_the_server(container_server: ServerThread) -> None:
    with SandboxClient(container_server.address, timeout_s=60) as c:
        outcome = c.run("import sqlite3\nsqlite3.sqlite_version", recovery=FAST)
    assert outcome.ok, outcome.attempts
    assert actions(outcome.attempts) == [(None, None)]  # one call: the server moved it
    assert outcome.result.backend is Backend.CONTAINER
    assert outcome.result.fallback_from is Backend.MONTY
    assert outcome.result.result.count(".") == 2  # a version like "3.40.1"


@pytest.mark.docker
def test_a_backend_the_caller_named_is_never_left(container_server: ServerThread) -> None:
    with SandboxClient(container_server.address, timeout_s=60) as c:
        outcome = c.run(
            "import sqlite3\nsqlite3.sqlite_version",
            backend="monty",
            escalate=lambda e: Abort(note="stays in Monty"),
            recovery=FAST,
        )
    assert outcome.status == "aborted"
    assert [a.backend for a in outcome.attempts] == [Backend.MONTY]
    assert outcome.escalations[0].reason.startswith("no recovery is left for UNSUPPORTED")
    assert "FALLBACK: the caller chose backend monty" in outcome.escalations[0].reason


def test_fallback_the_server_cannot_serve_goes_on_to_repair(
    server: ServerThread, client: SandboxClient
) -> None:
    assert not container_enabled(server)  # the shared server runs Monty only
    seen: list[Failure] = []

    def rewrite(code: str, failure: Failure) -> str:
        seen.append(failure)
        return "import math\nmath.sqrt(16)"

    outcome = client.run("import sqlite3\n1", repair=rewrite, recovery=FAST)
    assert outcome.result.result == 4.0
    kinds = actions(outcome.attempts)
    assert kinds[0] == (K.UNSUPPORTED, A.FALLBACK)
    assert kinds[1] == (K.INVALID_REQUEST, A.REPAIR)  # "container backend not enabled"
    assert outcome.attempts[1].grpc_code == "FAILED_PRECONDITION"
    assert "refused backend" in outcome.attempts[1].note
    # The repair function sees why the code failed, not the server's refusal.
    assert [f.kind for f in seen] == [K.UNSUPPORTED]
    assert outcome.attempts[2].backend is Backend.AUTO


# -- REPAIR ------------------------------------------------------------------------


def test_runtime_error_is_repaired_in_two_rounds(client: SandboxClient) -> None:
    script = iter(["xs = [1, 2, 3]\nxs[3]", "xs = [1, 2, 3]\nxs[2]"])
    asked: list[tuple[str, str]] = []

    def repair(code: str, failure: Failure) -> str:
        asked.append((code, failure.message))
        return next(script)

    outcome = client.run("xs = [1, 2, 3]\nxs['a']", repair=repair, recovery=FAST)
    assert outcome.status == "succeeded"
    assert outcome.result.result == 3
    assert outcome.code == "xs = [1, 2, 3]\nxs[2]"
    assert actions(outcome.attempts) == [
        (K.RUNTIME_ERROR, A.REPAIR),
        (K.RUNTIME_ERROR, A.REPAIR),
        (None, None),
    ]
    assert "TypeError" in asked[0][1] and "IndexError" in asked[1][1]
    assert len({a.code_sha256 for a in outcome.attempts}) == 3
    assert len({a.idempotency_key for a in outcome.attempts}) == 3


def test_a_repair_function_that_raises_is_recorded_not_propagated(client: SandboxClient) -> None:
    calls = 0

    def flaky(code: str, failure: Failure) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("the LLM is down")
        return "1 + 1"

    outcome = client.run("1 / 0", repair=flaky, recovery=FAST)
    assert outcome.result.result == 2
    assert "ConnectionError: the LLM is down" in outcome.attempts[0].note


# -- RESIZE ------------------------------------------------------------------------


def test_300mb_script_succeeds_after_resize_from_128mb(client: SandboxClient) -> None:
    outcome = client.run(
        NEEDS_300MB, policy="roomy", limits=Limits(memory_bytes=128 * MiB), recovery=FAST
    )
    assert outcome.result.result == 300 * MiB
    assert actions(outcome.attempts) == [
        (K.MEMORY_LIMIT, A.RESIZE),
        (K.MEMORY_LIMIT, A.RESIZE),
        (None, None),
    ]
    assert [a.limits.memory_bytes for a in outcome.attempts if a.limits] == [
        128 * MiB,
        256 * MiB,
        512 * MiB,
    ]


def test_resize_stops_at_the_servers_ceiling_then_repairs(client: SandboxClient) -> None:
    # `default` allows 256 MiB: asking for 512 is refused, and the refusal ends RESIZE
    # (it is not the code's POLICY_VIOLATION); REPAIR takes over.
    outcome = client.run(
        NEEDS_300MB,
        limits=Limits(memory_bytes=128 * MiB),
        repair=lambda code, failure: "s = 'a' * (100 * 1024 * 1024)\nlen(s)",
        recovery=FAST,
    )
    assert outcome.result.result == 100 * MiB
    assert actions(outcome.attempts) == [
        (K.MEMORY_LIMIT, A.RESIZE),
        (K.MEMORY_LIMIT, A.RESIZE),
        (K.POLICY_VIOLATION, A.REPAIR),
        (None, None),
    ]
    assert outcome.attempts[-1].limits == Limits(memory_bytes=256 * MiB)


# -- ESCALATE / ABORT --------------------------------------------------------------


def test_policy_violation_escalates_at_once(client: SandboxClient) -> None:
    repairs: list[str] = []
    with pytest.raises(EscalationRequired) as raised:
        client.run(
            "open('/etc/passwd').read()",
            repair=lambda code, failure: repairs.append(code) or "1",
            recovery=FAST,
        )
    escalation = raised.value.escalation
    assert escalation.failure is not None
    assert escalation.failure.kind is K.POLICY_VIOLATION
    assert actions(escalation.attempts) == [(K.POLICY_VIOLATION, A.ESCALATE)]
    assert repairs == []
    assert not escalation.budget_exhausted
    assert "/etc/passwd" in escalation.summary


def test_exhausted_budget_escalates_with_the_whole_history(client: SandboxClient) -> None:
    n = 0

    def hopeless(code: str, failure: Failure) -> str:
        nonlocal n
        n += 1
        return f"raise ValueError('attempt {n}')"

    with pytest.raises(EscalationRequired) as raised:
        client.run("raise ValueError('first')", repair=hopeless, recovery=FAST)
    escalation = raised.value.escalation
    assert escalation.budget_exhausted
    budget = FAST.budget_per_kind[K.RUNTIME_ERROR]
    assert actions(escalation.attempts) == [(K.RUNTIME_ERROR, A.REPAIR)] * budget + [
        (K.RUNTIME_ERROR, A.ESCALATE)
    ]
    assert [a.number for a in escalation.attempts] == list(range(1, budget + 2))
    assert escalation.code == f"raise ValueError('attempt {budget}')"


def test_invalid_request_aborts_without_retry(client: SandboxClient) -> None:
    outcome = client.run("1", policy="no-such-policy", repair=lambda c, f: "2", recovery=FAST)
    assert outcome.status == "aborted"
    assert actions(outcome.attempts) == [(K.INVALID_REQUEST, A.ABORT)]
    assert outcome.attempts[0].grpc_code == "NOT_FOUND"


def test_escalation_handler_can_approve_another_policy(client: SandboxClient) -> None:
    asked: list[Escalation] = []

    def approve_roomy(escalation: Escalation) -> ApprovePolicy:
        asked.append(escalation)
        return ApprovePolicy(policy="roomy", note="ok'd by on-call")

    # 400 MiB is more than `default` allows: the request itself is a POLICY_VIOLATION.
    outcome = client.run(
        NEEDS_300MB, limits=Limits(memory_bytes=400 * MiB), escalate=approve_roomy, recovery=FAST
    )
    assert outcome.result.result == 300 * MiB
    assert len(asked) == 1 and len(outcome.escalations) == 1
    assert [a.policy for a in outcome.attempts] == ["", "roomy"]
    assert "approved: approve_policy ok'd by on-call" in outcome.attempts[0].note


def test_escalation_handler_can_abort(client: SandboxClient) -> None:
    outcome = client.run("open('/etc/shadow')", escalate=lambda e: Abort(note="no"), recovery=FAST)
    assert outcome.status == "aborted"
    assert outcome.failure is not None and outcome.failure.kind is K.POLICY_VIOLATION


# -- fault injection: the server goes away mid-run ---------------------------------


@pytest.fixture
def own_server() -> Iterator[ServerThread]:
    with running_server() as srv:
        yield srv


def _restart_later(port: int, after_s: float, box: list[ServerThread]) -> threading.Thread:
    def restart() -> None:
        time.sleep(after_s)
        from tests.conftest import test_settings

        srv = ServerThread(test_settings(server={"port": port}))
        box.append(srv.__enter__())

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    return thread


# After a connection failure gRPC's channel reconnects on its own backoff (1 s, then
# x1.6 with jitter), failing calls fast meanwhile; a retry budget must outlast that.
OUTAGE = FAST.model_copy(
    update={
        "wait_initial_s": 0.2,
        "wait_max_s": 2.0,
        "budget_per_kind": {**FAST.budget_per_kind, K.INFRA_UNAVAILABLE: 10},
        "max_attempts": 15,
        "max_total_s": 30.0,
    }
)


def test_server_stopped_mid_call_and_restarted(own_server: ServerThread) -> None:
    port = int(own_server.address.rsplit(":", 1)[1])
    restarted: list[ServerThread] = []
    stopper = threading.Timer(0.4, lambda: own_server.call(own_server.server.stop(grace_s=0)))
    stopper.start()
    restarter = _restart_later(port, 1.5, restarted)
    try:
        with SandboxClient(own_server.address, timeout_s=30) as c:
            started = time.monotonic()
            outcome = c.run("import time\ntime.sleep(1)\n'done'", recovery=OUTAGE)
            took = time.monotonic() - started
    finally:
        stopper.join()
        restarter.join()
        for srv in restarted:
            srv.__exit__(None, None, None)
    assert outcome.result.result == "done", outcome.attempts
    transport = [a for a in outcome.attempts if a.grpc_code == "UNAVAILABLE"]
    assert transport and all(a.failure_kind is K.INFRA_UNAVAILABLE for a in transport)
    assert all(a.action is A.RETRY for a in outcome.attempts[:-1])
    # No answer came back for the key, so every retry reused it: a durable server can
    # answer from its journal instead of running the code twice.
    assert len({a.idempotency_key for a in outcome.attempts}) == 1
    assert took < OUTAGE.max_total_s
    print(f"\nrecovered after {len(outcome.attempts)} attempts in {took:.2f} s")


# -- the async twin ----------------------------------------------------------------


async def test_async_run_repairs_with_a_coroutine(server: ServerThread) -> None:
    async def repair(code: str, failure: Failure) -> str:
        return code.replace("undefined_name", "41")

    async with AsyncSandboxClient(server.address) as c:
        outcome = await c.run("undefined_name + 1", repair=repair, recovery=FAST)
    assert outcome.result.result == 42
    assert actions(outcome.attempts) == [(K.RUNTIME_ERROR, A.REPAIR), (None, None)]


async def test_async_run_escalates_and_resizes(server: ServerThread) -> None:
    async with AsyncSandboxClient(server.address) as c:
        with pytest.raises(EscalationRequired):
            await c.run("open('/etc/passwd')", recovery=FAST)
        outcome = await c.run(
            NEEDS_300MB, policy="roomy", limits=Limits(memory_bytes=128 * MiB), recovery=FAST
        )
    assert outcome.ok and len(outcome.attempts) == 3
