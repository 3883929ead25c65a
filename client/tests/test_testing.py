"""sandbox_client.testing: fast_recovery() does not sleep, serve_in_process() and the
sandbox_server fixture serve real executions, and a missing server distribution is said
plainly."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from test_recovery_unit import Script, failed

from sandbox_client import Backend, FailureKind, RecoveryPolicy, SandboxClient
from sandbox_client.recovery._run import run_sync
from sandbox_client.recovery._state import RunState
from sandbox_client.testing import fast_recovery, serve_in_process


def test_fast_recovery_has_no_backoff_and_the_default_budgets() -> None:
    fast, default = fast_recovery(), RecoveryPolicy()
    assert (fast.wait_initial_s, fast.wait_max_s, fast.wait_jitter_s) == (0, 0, 0)
    assert fast.budget_per_kind == default.budget_per_kind
    assert (fast.max_attempts, fast.max_total_s) == (default.max_attempts, default.max_total_s)
    assert fast_recovery(max_attempts=3, wait_max_s=1.0).max_attempts == 3
    assert fast_recovery(wait_max_s=1.0).wait_max_s == 1.0


def test_fast_recovery_retries_without_sleeping() -> None:
    script = Script([failed(FailureKind.SANDBOX_CRASH)] * 3)
    state = RunState("x", recovery=fast_recovery(), options={}, can_repair=False)
    started = time.monotonic()
    outcome = run_sync(script, state, repair=None, escalate=None)
    took = time.monotonic() - started
    assert outcome.ok and len(outcome.attempts) == 4
    # RecoveryPolicy() would wait at least 0.1 + 0.2 + 0.4 s between these.
    assert took < 0.2
    assert all(a.delay_s < 0.05 for a in outcome.attempts)


def test_serve_in_process_serves_real_executions(tmp_path: Path) -> None:
    with (
        serve_in_process(journal={"state_dir": tmp_path}) as address,
        SandboxClient(address) as client,
    ):
        ok = client.execute("print('hi')\n6 * 7", backend="monty")
        oom = client.execute("x = [0] * 10**9", backend="monty")
    assert ok.ok and ok.stdout == "hi\n" and ok.result == 42
    assert oom.failure is not None and oom.failure.kind is FailureKind.MEMORY_LIMIT
    assert ok.backend is Backend.MONTY
    assert any(tmp_path.iterdir())  # the state_dir given was the one the server used
    with SandboxClient(address, timeout_s=5) as client:
        gone = client.execute("1")
    assert gone.failure is not None and gone.failure.kind is FailureKind.INFRA_UNAVAILABLE


def test_the_sandbox_server_fixture_serves_a_real_execute(sandbox_server: str) -> None:
    # conftest.py imports the fixture, as the kit's docstring tells users to.
    with SandboxClient(sandbox_server, timeout_s=60) as client:
        result = client.execute("sum(range(10))")
    assert result.ok and result.result == 45


def test_without_the_server_distribution_the_kit_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("sandbox", "sandbox.app", "sandbox.config"):
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with (
        pytest.raises(RuntimeError, match="needs the `sandbox` server distribution"),
        serve_in_process(),
    ):
        pass
