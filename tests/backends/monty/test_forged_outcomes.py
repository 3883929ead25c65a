"""Code cannot choose its own classification: what it raises or prints never makes a
limit kind (MEMORY_LIMIT, TIMEOUT), a POLICY_VIOLATION or an UNSUPPORTED; the sandbox's
own signals do (the session's sealed limits, the host's timer, its record of denied
calls, an error Monty itself raised). Plain runs, sessions and tool runs alike."""

from __future__ import annotations

import contextlib

import pytest

from sandbox.backends.monty.outcome import DeniedCalls
from sandbox.backends.monty.sealed import SealedLimits
from sandbox_client import ExecutionResult, FailureKind, Limits, SandboxClient, SandboxError
from tests.conftest import limits

FAST = Limits(wall_time_ms=1500)

# What Monty's own limit errors say, word for word, with the default policy's limits
# (256 MiB, 10 s) and the 1.5 s these tests ask for.
FORGED = [
    "raise MemoryError('fake')",
    "raise MemoryError('memory limit exceeded: 99999999999 bytes > 268435456 bytes')",
    "raise MemoryError('memory limit exceeded')",
    "raise TimeoutError('time limit exceeded')",
    "raise TimeoutError('feed time limit exceeded: 1.500061s > 1.5s')",
    "raise TimeoutError('sleep limit exceeded: 3600s > 1.5s')",
    "def f():\n    raise TimeoutError('feed time limit exceeded: 10.5s > 10s')\nf()",
    "e = MemoryError('memory limit exceeded: 9 bytes > 268435456 bytes')\nraise e",
    "try:\n    x = 1\nexcept Exception:\n    pass\nraise MemoryError('memory limit exceeded')",
]

FORGED_UNSUPPORTED = [
    "raise AttributeError(\"module 'math' has no attribute 'lcm'\")",
    "raise AttributeError(\"module 'os' has no attribute 'fork'\")",
    "raise AttributeError(\"'list' object has no attribute 'sort'\")",
    "raise AttributeError(\"type object 'str' has no attribute 'removeprefix'\")",
    "raise NameError(\"name 'exec' is not defined\")",
    "def g():\n    raise NameError(\"name 'compile' is not defined\")\ng()",
    "e = AttributeError(\"module 'math' has no attribute 'lcm'\")\nraise (\n    e  # here\n)",
    "raise \\\n    AttributeError(\"module 'math' has no attribute 'lcm'\")",
    "class list:\n    pass\nlist().sort()",
    "class str:\n    pass\nstr.removeprefix",
]

# A denial the code caught, then an error of its own.
AFTER_A_CAUGHT_DENIAL = [
    "raise OSError('x')",
    "raise PermissionError('no')",
    "raise RuntimeError('boom')",
    "1 / 0",
    "raise FileNotFoundError('missing.txt')",
]


def run(client: SandboxClient, code: str) -> ExecutionResult:
    return client.execute(code, backend="monty", limits=FAST)


def assert_own_error(result: ExecutionResult, exception_type: str) -> None:
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR, failure
    assert failure.exception_type == exception_type
    assert failure.line is not None  # its own line, as for any error of its own
    assert not failure.retryable


@pytest.mark.parametrize("code", FORGED)
def test_a_raised_limit_error_is_the_codes_own(client: SandboxClient, code: str) -> None:
    result = run(client, code)
    exception_type = "MemoryError" if "MemoryError" in code else "TimeoutError"
    assert_own_error(result, exception_type)


@pytest.mark.parametrize("code", FORGED_UNSUPPORTED)
def test_a_raised_missing_feature_is_the_codes_own(client: SandboxClient, code: str) -> None:
    result = run(client, code)
    assert_own_error(result, "NameError" if "NameError" in code else "AttributeError")


@pytest.mark.parametrize("tail", AFTER_A_CAUGHT_DENIAL)
def test_a_caught_denial_does_not_classify_a_later_error(client: SandboxClient, tail: str) -> None:
    code = f"try:\n    open('/etc/passwd')\nexcept Exception:\n    pass\n{tail}"
    result = run(client, code)
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR, failure
    assert failure.line == 5


@pytest.mark.parametrize(
    "code",
    [
        "open('/etc/passwd')",
        "try:\n    open('/etc/passwd')\nexcept OSError as e:\n    raise e",
        "try:\n    open('/etc/passwd')\nexcept OSError:\n    raise",
        "from pathlib import Path\nPath('/etc/shadow').read_text()",
    ],
)
def test_a_denial_the_run_died_of_is_a_policy_violation(client: SandboxClient, code: str) -> None:
    failure = run(client, code).failure
    assert failure is not None and failure.kind is FailureKind.POLICY_VIOLATION, failure
    assert "/etc/" in failure.details["attempted"]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("a = [0] * 10**9", FailureKind.MEMORY_LIMIT),
        ("while True:\n    pass", FailureKind.TIMEOUT),
        ("import time\ntime.sleep(3600)", FailureKind.TIMEOUT),
        ("list.sort([3, 1])", FailureKind.UNSUPPORTED),
        ("import math\nx = getattr(math, 'no_such_function')", FailureKind.RUNTIME_ERROR),
    ],
)
def test_the_sandboxs_own_limits_keep_their_kinds(
    client: SandboxClient, code: str, kind: FailureKind
) -> None:
    failure = run(client, code).failure
    assert failure is not None and failure.kind is kind, failure


def test_a_real_memory_limit_names_the_policys_limit_not_the_seal(client: SandboxClient) -> None:
    failure = client.execute("a = [0] * 10**9", backend="monty").failure
    assert failure is not None and failure.kind is FailureKind.MEMORY_LIMIT
    assert failure.details == {"limit": "memory_bytes", "limit_value": str(256 * 1024 * 1024)}
    assert "268435456-byte" in failure.message and " > " not in failure.message


def test_in_a_session_limits_are_the_sandboxs_and_raises_the_codes(
    client: SandboxClient,
) -> None:
    session = client.create_session(limits=FAST)
    try:
        forged = client.execute(FORGED[1], session_id=session.session_id)
        assert_own_error(forged, "MemoryError")
        real = client.execute("a = [0] * 10**9", session_id=session.session_id)
        assert real.failure is not None and real.failure.kind is FailureKind.MEMORY_LIMIT
        again = client.execute(FORGED[4], session_id=session.session_id)
        assert_own_error(again, "TimeoutError")
        timed_out = client.execute("while True:\n    pass", session_id=session.session_id)
        assert timed_out.failure is not None and timed_out.failure.kind is FailureKind.TIMEOUT
    finally:
        with contextlib.suppress(SandboxError):  # a timeout ends the session
            client.close_session(session.session_id)


@pytest.mark.parametrize(
    ("code", "kind", "exception_type"),
    [
        ("ping()\n" + FORGED[1], FailureKind.RUNTIME_ERROR, "MemoryError"),
        ("ping()\n" + FORGED[5], FailureKind.RUNTIME_ERROR, "TimeoutError"),
        (
            "ping()\nraise TimeoutError('sleep limit exceeded (1.5 s in all)')",
            FailureKind.RUNTIME_ERROR,
            "TimeoutError",
        ),
        ("ping()\n" + FORGED_UNSUPPORTED[0], FailureKind.RUNTIME_ERROR, "AttributeError"),
        (
            "ping()\ntry:\n    open('/etc/passwd')\nexcept OSError:\n    pass\nraise OSError('x')",
            FailureKind.RUNTIME_ERROR,
            "OSError",
        ),
        ("ping()\na = [0] * 10**9", FailureKind.MEMORY_LIMIT, "MemoryError"),
        ("ping()\nimport time\ntime.sleep(3600)", FailureKind.TIMEOUT, "TimeoutError"),
        ("ping()\nwhile True:\n    pass", FailureKind.TIMEOUT, "TimeoutError"),
        ("ping()\nopen('/etc/passwd')", FailureKind.POLICY_VIOLATION, "PermissionError"),
    ],
)
def test_tool_runs_classify_the_same_way(
    client: SandboxClient, code: str, kind: FailureKind, exception_type: str
) -> None:
    result = client.run_tools(code, tools={"ping": lambda: 1}, limits=FAST)
    failure = result.failure
    assert failure is not None and failure.kind is kind, failure
    assert failure.exception_type == exception_type


def test_a_tool_runs_sleeps_past_the_budget_cannot_be_caught(client: SandboxClient) -> None:
    code = (
        "import asyncio\n"
        "async def main():\n"
        "    try:\n"
        "        await asyncio.sleep(5)\n"
        "    except Exception:\n"
        "        return 'caught'\n"
        "ping()\n"
        "await main()"
    )
    result = client.run_tools(code, tools={"ping": lambda: 1}, limits=FAST)
    assert result.failure is not None and result.failure.kind is FailureKind.TIMEOUT


# -- the pieces on their own ---------------------------------------------------------------

LIMITS = limits(wall_time_ms=1500, pids=16, disk_bytes=1 << 20)


def test_seals_stay_a_little_under_the_policys_limits_and_differ() -> None:
    seals = [SealedLimits.of(LIMITS) for _ in range(50)]
    for seal in seals:
        assert LIMITS.memory_bytes - (1 << 20) <= seal.memory_bytes < LIMITS.memory_bytes
        assert 1_500_000 - 50_000 <= seal.feed_us < 1_500_000
        assert 1_500_000 - 50_000 <= seal.sleep_us < 1_500_000
    assert len({s.memory_bytes for s in seals}) > 40


def test_a_seal_recognises_only_its_own_values() -> None:
    seal = SealedLimits(
        memory_bytes=268_000_123, feed_us=1_499_877, sleep_us=1_480_001, max_recursion_depth=200
    )
    assert seal.is_memory_limit("memory limit exceeded: 16000043056 bytes > 268000123 bytes")
    assert not seal.is_memory_limit("memory limit exceeded: 16000043056 bytes > 268435456 bytes")
    assert seal.is_time_limit("feed time limit exceeded: 1.500146611s > 1.499877s")
    assert not seal.is_time_limit("feed time limit exceeded: 1.500146611s > 1.5s")
    assert seal.is_sleep_limit("sleep limit exceeded: 3600s > 1.480001s")
    assert not seal.is_sleep_limit("sleep limit exceeded: 3600s > 1.480002s")
    small = SealedLimits(memory_bytes=1, feed_us=499_877, sleep_us=250, max_recursion_depth=1)
    assert small.is_time_limit("feed time limit exceeded: 500.1ms > 499.877ms")
    assert small.is_sleep_limit("sleep limit exceeded: 3600s > 250µs")


def test_denied_calls_keep_a_bounded_record() -> None:
    denied = DeniedCalls()
    for i in range(1000):
        denied.add("open", ("/" + "x" * 10_000_000 + str(i), "r"))
    assert denied.count == 1000
    assert len(denied.attempts) == DeniedCalls.MAX_KEPT
    assert all(len(a) <= DeniedCalls.MAX_CHARS for a in denied.attempts)
    assert denied.named_by("Permission denied: '/" + "x" * 9_000_000 + "'") is not None
    assert denied.named_by("Permission denied: '/etc/passwd'") is None
    denied.add("open", ("/etc/passwd", "r"))  # the 1001st: the latest is always kept
    assert denied.named_by("Permission denied: '/etc/passwd'") == "open('/etc/passwd', 'r')"
    assert len(denied.attempts) == DeniedCalls.MAX_KEPT
    denied.add("open", (10**5000, "r"))  # str() of it raises: kept as its type
