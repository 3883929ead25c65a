"""Every response fits the wire: whatever the code puts in a result's fields (a failure's
message, its traceback's source lines and names, a denied call's arguments, output),
the result is clipped where the executor stamps it, so it reaches the caller classified
and under the server's message size."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.core.executor import (
    MAX_FRAMES,
    MAX_MESSAGE_CHARS,
    MAX_SOURCE_CHARS,
    bounded,
)
from sandbox_client import (
    EscalationRequired,
    ExecutionResult,
    Failure,
    FailureKind,
    Frame,
    SandboxClient,
    SuggestedAction,
)
from sandbox_client.protocol.convert import result_to_proto
from sandbox_client.testing import fast_recovery
from tests.conftest import ServerThread, running_server

MESSAGE_LIMIT = 8 * 1024 * 1024  # the server's default max_message_bytes

# 200 frames, each with a 250 KB source line: 50 MB of traceback.
DEEP_WIDE = "def f(n):\n    return f(n - 1) if n else 1 / 0  # " + "y" * 250_000 + "\nf(190)"


def wire_size(result: ExecutionResult) -> int:
    return result_to_proto(result).ByteSize()


def test_a_traceback_of_huge_source_lines_is_a_runtime_error_that_fits(
    client: SandboxClient,
) -> None:
    result = client.execute(DEEP_WIDE, backend="monty")
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR, failure
    assert failure.exception_type == "ZeroDivisionError"
    assert failure.line == 2
    assert len(failure.frames) == MAX_FRAMES
    assert failure.frames[0].function_name == ""  # the outermost (the top level) stays
    assert int(failure.details["frames_omitted"]) > 100
    assert all(len(f.source_line) <= MAX_SOURCE_CHARS for f in failure.frames)
    assert failure.frames[-1].source_line.startswith("    return f(n - 1) if n else 1 / 0")
    assert wire_size(result) < MESSAGE_LIMIT // 8


@pytest.mark.parametrize(
    "code",
    [
        "open('x' * 9_000_000)",
        "from pathlib import Path\nPath('/' + 'x' * 9_000_000).read_text()",
    ],
)
def test_a_denial_of_a_huge_path_is_a_policy_violation_that_fits(
    client: SandboxClient, code: str
) -> None:
    result = client.execute(code, backend="monty")
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.POLICY_VIOLATION, failure
    assert failure.suggested_action is SuggestedAction.ESCALATE
    assert failure.details["attempted"].startswith(("open('/xxxx", "Path.read_text('/xxxx"))
    assert len(failure.message) <= MAX_MESSAGE_CHARS
    assert wire_size(result) < MESSAGE_LIMIT // 8


def test_the_policy_violation_of_a_huge_denial_is_escalated(client: SandboxClient) -> None:
    with pytest.raises(EscalationRequired) as escalated:
        client.run("open('x' * 9_000_000)", backend="monty", recovery=fast_recovery())
    attempts = escalated.value.escalation.attempts
    assert [a.failure_kind for a in attempts] == [FailureKind.POLICY_VIOLATION]


def test_a_huge_exception_message_is_clipped_to_its_head(client: SandboxClient) -> None:
    result = client.execute("raise ValueError('start ' + 'z' * 9_000_000)", backend="monty")
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR
    assert failure.message.startswith("ValueError: start zzz")
    assert len(failure.message) <= MAX_MESSAGE_CHARS
    assert wire_size(result) < MESSAGE_LIMIT // 8


@pytest.fixture(scope="module")
def small_messages() -> Iterator[ServerThread]:
    with running_server(server={"max_message_bytes": 1024 * 1024}) as srv:
        yield srv


def test_output_the_policy_allows_but_a_message_cannot_carry_is_an_output_limit(
    small_messages: ServerThread,
) -> None:
    # The default policy allows 1 MiB of output; this server's messages hold 1 MiB in all.
    with SandboxClient(small_messages.address, timeout_s=60) as client:
        printed = client.execute("print('p' * 1_000_000)", backend="monty")
        valued = client.execute("'v' * 1_000_000", backend="monty")
    for result in (printed, valued):
        failure = result.failure
        assert failure is not None and failure.kind is FailureKind.OUTPUT_LIMIT, failure
        assert failure.details["limit"] == "max_message_bytes"
        assert wire_size(result) < 1024 * 1024
    assert printed.stdout_truncated and printed.stdout.startswith("ppp")
    assert valued.result_json is None


def test_a_tool_run_result_is_bounded_too(client: SandboxClient) -> None:
    result = client.run_tools("ping()\n" + DEEP_WIDE, tools={"ping": lambda: 1})
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR, failure
    assert wire_size(result) < MESSAGE_LIMIT // 8


# -- bounded() on its own ------------------------------------------------------------------


def frame(source: str, column: int = 1, name: str = "f") -> Frame:
    return Frame(filename="<code>", line=1, column=column, function_name=name, source_line=source)


def test_bounded_leaves_a_small_result_as_it_is() -> None:
    result = ExecutionResult.failed(
        Failure.of(FailureKind.RUNTIME_ERROR, "ZeroDivisionError: x", frames=(frame("1/0"),))
    )
    assert bounded(result, MESSAGE_LIMIT) is result
    ok = ExecutionResult(ok=True, stdout="hi\n", result_json="1")
    assert bounded(ok, MESSAGE_LIMIT) is ok


def test_bounded_clips_every_field_the_code_fills() -> None:
    failure = Failure.of(
        FailureKind.POLICY_VIOLATION,
        "first line " + "m" * 100_000,
        exception_type="E" * 10_000,
        frames=tuple(frame("s" * 10_000, name="n" * 10_000) for _ in range(300)),
        details={f"k{i}" * 1000: "v" * 100_000 for i in range(100)},
    )
    clipped = bounded(ExecutionResult.failed(failure), MESSAGE_LIMIT).failure
    assert clipped is not None
    assert clipped.kind is FailureKind.POLICY_VIOLATION and not clipped.retryable
    assert clipped.message.startswith("first line mmm") and len(clipped.message) <= 2000
    assert len(clipped.exception_type) <= 200
    assert len(clipped.frames) == MAX_FRAMES
    assert clipped.details["frames_omitted"] == str(300 - MAX_FRAMES)
    assert all(len(f.source_line) <= MAX_SOURCE_CHARS for f in clipped.frames)
    assert all(len(f.function_name) <= 200 for f in clipped.frames)
    assert len(clipped.details) <= 21 and all(len(v) <= 1000 for v in clipped.details.values())


def test_a_long_source_line_keeps_the_part_its_column_points_at() -> None:
    source = "a" * 5000 + "HERE" + "b" * 5000
    failure = Failure.of(FailureKind.RUNTIME_ERROR, "x", frames=(frame(source, column=5001),))
    clipped = bounded(ExecutionResult.failed(failure), MESSAGE_LIMIT).failure
    assert clipped is not None
    shown = clipped.frames[0].source_line
    assert "HERE" in shown and shown.startswith("...") and shown.endswith("...")
    head = bounded(
        ExecutionResult.failed(
            Failure.of(FailureKind.RUNTIME_ERROR, "x", frames=(frame(source, column=3),))
        ),
        MESSAGE_LIMIT,
    ).failure
    assert head is not None and head.frames[0].source_line.startswith("aaa")


def test_output_past_the_message_is_truncated_and_an_earlier_failure_stays() -> None:
    failed = ExecutionResult.failed(
        Failure.of(FailureKind.RUNTIME_ERROR, "KeyError: 'k'"),
        stdout="o" * 2_000_000,
        stderr="e" * 2_000_000,
    )
    result = bounded(failed, 1024 * 1024)
    assert result.failure is not None and result.failure.kind is FailureKind.RUNTIME_ERROR
    assert result.stdout_truncated and result.stderr_truncated
    assert len(result.stdout) + len(result.stderr) <= 1024 * 1024
    assert result.stdout.startswith("ooo") and result.stderr.startswith("eee")
