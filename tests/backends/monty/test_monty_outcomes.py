"""Every failure kind Monty can produce, classified, through a real server; and the
server still runs `print(1)` after each one."""

from __future__ import annotations

import time

import pytest

from sandbox_client import FailureKind, Limits, SandboxClient, SuggestedAction
from tests.conftest import failure_of, killing_monty_workers

FAST = Limits(wall_time_ms=1500)


def assert_server_still_serves(client: SandboxClient) -> None:
    after = client.execute("print(1)", backend="monty")
    assert after.ok, after.failure
    assert after.stdout == "1\n"


def run(client: SandboxClient, code: str, **kwargs: object) -> object:
    result = client.execute(code, backend="monty", **kwargs)  # type: ignore[arg-type]
    assert not result.ok
    assert result.failure is not None
    return result


def test_success_reports_stdout_and_last_expression(client: SandboxClient) -> None:
    result = client.execute("print('hi')\n{'a': [1, 2]}", backend="monty")
    assert result.ok and result.failure is None
    assert result.stdout == "hi\n"
    assert result.result == {"a": [1, 2]}
    assert result.backend == "monty"
    assert result.execution_id.startswith("exe_")
    assert result.policy_name == "default" and result.policy_digest.startswith("sha256:")


@pytest.mark.parametrize(
    ("code", "value"),
    [
        ("{3, 1, 2}", [1, 2, 3]),  # sorted: Monty's iteration order is not CPython's
        ("frozenset({'b', 'a'})", ["a", "b"]),
        ("[{2, 1}, (3,)]", [[1, 2], [3]]),
        ("{1, 'a'}", None),  # items that do not compare: in iteration order
    ],
)
def test_a_set_result_is_a_json_array(client: SandboxClient, code: str, value: object) -> None:
    result = client.execute(code, backend="monty")
    assert result.ok, result.failure
    if value is None:
        assert sorted(map(str, result.result)) == ["1", "a"]
    else:
        assert result.result == value


def test_syntax_error_names_line(client: SandboxClient) -> None:
    result = client.execute("x = 1\ndef f(:\n    pass", backend="monty")
    assert result.failure is not None
    assert result.failure.kind is FailureKind.SYNTAX_ERROR
    assert result.failure.line == 2
    assert result.failure.suggested_action is SuggestedAction.REPAIR
    assert not result.failure.retryable
    assert_server_still_serves(client)


def test_runtime_error_carries_type_and_failing_line(client: SandboxClient) -> None:
    result = client.execute("x = 1\ny = 2\nz = x / (y - 2)\n", backend="monty")
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR
    assert failure.exception_type == "ZeroDivisionError"
    assert failure.line == 3
    assert failure.frames[-1].source_line == "z = x / (y - 2)"
    assert "line 3" in failure.message
    assert_server_still_serves(client)


def test_user_raised_memory_error_is_a_runtime_error(client: SandboxClient) -> None:
    result = client.execute("raise MemoryError('mine')", backend="monty")
    assert result.failure is not None and result.failure.kind is FailureKind.RUNTIME_ERROR


def test_busy_loop_times_out(client: SandboxClient) -> None:
    started = time.monotonic()
    result = client.execute("while True:\n    pass", backend="monty", limits=FAST)
    assert result.failure is not None and result.failure.kind is FailureKind.TIMEOUT
    assert result.failure.details["limit"] == "wall_time_ms"
    assert time.monotonic() - started < 5
    assert_server_still_serves(client)


@pytest.mark.parametrize("code", ["a = [0] * 10**9", "s = 'x' * 10**10"])
def test_allocation_bombs_hit_memory_limit(client: SandboxClient, code: str) -> None:
    result = client.execute(f"print('before')\n{code}", backend="monty")
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.MEMORY_LIMIT
    assert failure.line == 2
    assert result.stdout == "before\n"
    assert_server_still_serves(client)


def test_output_past_cap_is_truncated_and_flagged(client: SandboxClient) -> None:
    cap = 10_000
    result = client.execute(
        "for i in range(100000):\n    print('x' * 99)",
        backend="monty",
        limits=Limits(output_bytes=cap),
    )
    assert result.failure is not None and result.failure.kind is FailureKind.OUTPUT_LIMIT
    assert result.stdout_truncated
    assert len(result.stdout.encode()) == cap
    assert result.stdout.startswith("x" * 99 + "\n")
    assert_server_still_serves(client)


def test_oversized_result_is_an_output_limit(client: SandboxClient) -> None:
    result = client.execute("'y' * 50_000", backend="monty", limits=Limits(output_bytes=10_000))
    assert result.failure is not None and result.failure.kind is FailureKind.OUTPUT_LIMIT
    assert result.result_json is None


@pytest.mark.parametrize(
    "code",
    [
        "open('/etc/passwd').read()",
        "from pathlib import Path\nPath('/etc/passwd').read_text()",
        "import os\nos.getenv('HOME')",
    ],
)
def test_host_access_is_a_policy_violation(client: SandboxClient, code: str) -> None:
    result = client.execute(code, backend="monty")
    failure = failure_of(result, FailureKind.POLICY_VIOLATION)
    assert failure.suggested_action is SuggestedAction.ESCALATE
    assert "root:" not in result.stdout
    assert_server_still_serves(client)


def test_caught_denial_is_not_a_failure(client: SandboxClient) -> None:
    code = "try:\n    open('/etc/passwd')\nexcept OSError:\n    print('denied')\n"
    result = client.execute(code, backend="monty")
    assert result.ok and result.stdout == "denied\n"


def test_file_read_denial_names_the_path(client: SandboxClient) -> None:
    result = client.execute("open('/etc/passwd').read()", backend="monty")
    assert result.failure is not None
    assert "/etc/passwd" in result.failure.details["attempted"]


@pytest.mark.parametrize(
    ("code", "missing"),
    [
        ("import socket", "module socket"),
        ("import numpy", "module numpy"),
        ("import zipfile", "module zipfile"),
    ],
)
def test_module_monty_lacks_is_unsupported(client: SandboxClient, code: str, missing: str) -> None:
    result = client.execute(code, backend="monty")
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.UNSUPPORTED
    assert failure.suggested_action is SuggestedAction.FALLBACK
    assert failure.details["missing"] == missing
    assert_server_still_serves(client)


def test_policy_denied_import_is_refused_before_running(client: SandboxClient) -> None:
    result = client.execute("x = 1\nimport ctypes", backend="monty")
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.POLICY_VIOLATION
    assert failure.details == {"rule": "import", "target": "ctypes"}
    assert failure.line == 2


def test_unimplemented_syntax_is_unsupported(client: SandboxClient) -> None:
    result = client.execute("class E(Exception):\n    pass\nraise E()", backend="monty")
    assert result.failure is not None and result.failure.kind is FailureKind.UNSUPPORTED


def test_killed_worker_is_a_sandbox_crash(client: SandboxClient) -> None:
    with killing_monty_workers(after_s=0.7):
        result = client.execute("while True:\n    pass", backend="monty")
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.SANDBOX_CRASH
    assert failure.retryable and failure.suggested_action is SuggestedAction.RETRY
    assert_server_still_serves(client)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"code": ""}, "code"),
        ({"code": "   \n"}, "code"),
        ({"code": "x = 1\n" * 60_000}, "code"),
        ({"code": "1", "session_id": "ses_nope"}, "session_id"),
        ({"code": "1", "policy": "no-such-policy"}, "policy"),
    ],
)
def test_invalid_requests(client: SandboxClient, kwargs: dict[str, str], field: str) -> None:
    result = client.execute(**kwargs)  # type: ignore[arg-type]
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.INVALID_REQUEST
    assert failure.details["field"] == field
    assert failure.suggested_action is SuggestedAction.ABORT
    assert not result.execution_id
    assert_server_still_serves(client)


def test_client_deadline_is_cancelled(client: SandboxClient) -> None:
    started = time.monotonic()
    result = client.execute("while True:\n    pass", backend="monty", timeout_s=0.5)
    assert result.failure is not None and result.failure.kind is FailureKind.CANCELLED
    assert result.failure.grpc_code == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 3
    assert_server_still_serves(client)


def test_sleep_cannot_hold_a_worker_past_the_budget(client: SandboxClient) -> None:
    started = time.monotonic()
    result = client.execute(
        "import time\nfor _ in range(100):\n    time.sleep(0.4)\n",
        backend="monty",
        limits=FAST,
    )
    elapsed = time.monotonic() - started
    assert result.failure is not None and result.failure.kind is FailureKind.TIMEOUT
    assert elapsed < FAST.wall_time_ms / 1000 + 1.5
    assert_server_still_serves(client)


def test_single_long_sleep_is_refused_at_once(client: SandboxClient) -> None:
    started = time.monotonic()
    result = client.execute("import time\ntime.sleep(3600)", backend="monty", limits=FAST)
    assert result.failure is not None and result.failure.kind is FailureKind.TIMEOUT
    assert time.monotonic() - started < 3


def test_request_above_policy_is_a_policy_violation_naming_the_field(
    client: SandboxClient,
) -> None:
    result = client.execute("1", limits=Limits(memory_bytes=10**12))
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.POLICY_VIOLATION
    assert failure.details["field"] == "limits.memory_bytes"
    assert failure.grpc_code == "PERMISSION_DENIED"


def test_lower_limits_apply(client: SandboxClient) -> None:
    result = client.execute(
        "a = [0] * 10_000_000", backend="monty", limits=Limits(memory_bytes=1_000_000)
    )
    assert result.failure is not None and result.failure.kind is FailureKind.MEMORY_LIMIT
    assert result.failure.details["limit_value"] == "1000000"


def test_inputs_are_bound_and_stdin_feeds_input(client: SandboxClient) -> None:
    result = client.execute(
        "name = input()\nf'{greeting}, {name}! {n * 2}'",
        backend="monty",
        inputs={"greeting": "hello", "n": 21},
        stdin="Ada\n",
    )
    assert result.ok, result.failure
    assert result.result == "hello, Ada! 42"


def test_recursion_limit_is_a_runtime_error_naming_the_limit(client: SandboxClient) -> None:
    result = client.execute("def f(n):\n    return f(n + 1)\nf(0)", backend="monty")
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR
    assert failure.exception_type == "RecursionError"
    assert failure.details["limit"] == "max_recursion_depth"
