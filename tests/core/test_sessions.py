"""Sessions keep interpreter state, expire when idle, are bounded, and are discarded
(not silently reused) after their sandbox is lost."""

from __future__ import annotations

import time

import pytest

from sandbox_client import FailureKind, Limits, SandboxClient, SandboxError
from tests.conftest import killing_monty_workers, running_server


def test_state_survives_between_executions(client: SandboxClient) -> None:
    session = client.create_session()
    try:
        assert client.execute(
            "def sq(x):\n    return x * x\nn = 7", session_id=session.session_id
        ).ok
        result = client.execute("sq(n)", session_id=session.session_id)
        assert result.result == 49
        assert result.session_id == session.session_id
    finally:
        client.close_session(session.session_id)


def test_sessions_are_isolated_from_each_other(client: SandboxClient) -> None:
    a, b = client.create_session(), client.create_session()
    try:
        client.execute("secret = 'a-only'", session_id=a.session_id)
        result = client.execute("secret", session_id=b.session_id)
        assert result.failure is not None and result.failure.exception_type == "NameError"
    finally:
        client.close_session(a.session_id)
        client.close_session(b.session_id)


def test_closed_session_is_unknown(client: SandboxClient) -> None:
    session = client.create_session()
    client.close_session(session.session_id)
    result = client.execute("1", session_id=session.session_id)
    assert result.failure is not None and result.failure.kind is FailureKind.INVALID_REQUEST
    with pytest.raises(SandboxError) as raised:
        client.close_session(session.session_id)
    assert raised.value.failure.kind is FailureKind.INVALID_REQUEST


def test_crash_loses_the_session_and_says_so(client: SandboxClient) -> None:
    session = client.create_session()
    with killing_monty_workers():
        result = client.execute("while True:\n    pass", session_id=session.session_id)
    assert result.failure is not None and result.failure.kind is FailureKind.SANDBOX_CRASH
    again = client.execute("1", session_id=session.session_id)
    assert again.failure is not None and again.failure.kind is FailureKind.CORRUPT_STATE
    assert again.failure.retryable
    assert client.execute("print(1)").ok


def test_timeout_discards_the_session(client: SandboxClient) -> None:
    session = client.create_session(limits=Limits(wall_time_ms=500))
    result = client.execute("while True:\n    pass", session_id=session.session_id)
    assert result.failure is not None and result.failure.kind is FailureKind.TIMEOUT
    again = client.execute("1", session_id=session.session_id)
    assert again.failure is not None and again.failure.kind is FailureKind.CORRUPT_STATE


def test_session_limits_apply_to_each_execution(client: SandboxClient) -> None:
    session = client.create_session(limits=Limits(memory_bytes=2_000_000))
    try:
        result = client.execute("x = [0] * 10_000_000", session_id=session.session_id)
        assert result.failure is not None and result.failure.kind is FailureKind.MEMORY_LIMIT
        assert client.execute("1 + 1", session_id=session.session_id).result == 2
    finally:
        client.close_session(session.session_id)


def test_limits_on_a_session_execution_are_refused(client: SandboxClient) -> None:
    session = client.create_session()
    try:
        result = client.execute("1", session_id=session.session_id, limits=Limits(wall_time_ms=10))
        assert result.failure is not None and result.failure.kind is FailureKind.INVALID_REQUEST
        assert result.failure.details["field"] == "limits"
    finally:
        client.close_session(session.session_id)


def test_session_above_policy_is_refused(client: SandboxClient) -> None:
    with pytest.raises(SandboxError) as raised:
        client.create_session(limits=Limits(wall_time_ms=10**9))
    assert raised.value.failure.kind is FailureKind.POLICY_VIOLATION


def test_count_is_bounded_and_idle_sessions_expire() -> None:
    with (
        running_server(sessions={"max_open": 2, "idle_timeout_s": 0.6}) as server,
        SandboxClient(server.address) as client,
    ):
        first = client.create_session()
        client.create_session()
        with pytest.raises(SandboxError) as raised:
            client.create_session()
        failure = raised.value.failure
        assert failure.kind is FailureKind.THROTTLED
        assert failure.retry_after_ms == 600
        time.sleep(1.2)
        result = client.execute("1", session_id=first.session_id)
        assert result.failure is not None
        assert result.failure.kind is FailureKind.CORRUPT_STATE
        assert client.create_session().session_id
