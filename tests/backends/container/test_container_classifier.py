"""map_container_outcome(), case by case. No engine needed: these feed it the signals a
run produces (the outcome tests check that real runs produce them)."""

from __future__ import annotations

import inspect
from typing import Any

import docker.errors
import pytest
import requests
import requests.exceptions

from sandbox.backends.container.outcome import (
    ERROR_CLASS_KINDS,
    ContainerSignals,
    RunnerStartError,
    map_container_outcome,
)
from sandbox.backends.tools import InjectedToolError
from sandbox_client import FailureKind
from tests.backends.container.conftest import LIMITS


def signals(**fields: Any) -> ContainerSignals:
    return ContainerSignals(limits=LIMITS, image="sandbox-runner:latest", **fields)


def kind(exc: BaseException | None = None, **fields: Any) -> FailureKind | None:
    failure = map_container_outcome(exc, signals(**fields))
    return None if failure is None else failure.kind


def error_frame(type_name: str, **error: Any) -> dict[str, Any]:
    body = {"type": type_name, "module": "builtins", "message": "m", "frames": [], **error}
    return {"t": "result", "ok": False, "exit_code": 1, "error": body, "blocked": []}


def api_error(status: int) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("engine said no", response=response)


def test_every_docker_error_class_is_mapped() -> None:
    classes = {
        cls
        for _, cls in inspect.getmembers(docker.errors, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == "docker.errors"
    }
    assert classes - set(ERROR_CLASS_KINDS) == set()


def test_completed_run_is_no_failure() -> None:
    assert kind(frame={"t": "result", "ok": True, "value": "1"}) is None


def test_output_cap_wins_over_everything() -> None:
    assert kind(output_exceeded=True, host_timed_out=True) is FailureKind.OUTPUT_LIMIT


def test_host_timeout() -> None:
    assert kind(host_timed_out=True, exit_code=137) is FailureKind.TIMEOUT


def test_oversized_result() -> None:
    frame = {"t": "result", "ok": True, "value_bytes": 10**9}
    assert kind(frame=frame) is FailureKind.OUTPUT_LIMIT


def test_oom_killed_without_frame() -> None:
    assert kind(oom_killed=True, exit_code=137) is FailureKind.MEMORY_LIMIT


def test_memory_error_in_the_code() -> None:
    assert kind(frame=error_frame("MemoryError")) is FailureKind.MEMORY_LIMIT


@pytest.mark.parametrize(
    "source_line", ["raise MemoryError('memory limit exceeded')", "        raise", "raise \\"]
)
def test_the_codes_own_raise_memory_error_is_a_runtime_error(source_line: str) -> None:
    column = len(source_line) - len(source_line.lstrip()) + 1
    trace = [{"line": 3, "column": column, "source_line": source_line}]
    assert kind(frame=error_frame("MemoryError", frames=trace)) is FailureKind.RUNTIME_ERROR


def test_an_allocation_that_fails_is_a_memory_limit() -> None:
    trace = [{"line": 1, "column": 5, "source_line": "a = [0] * 10**12"}]
    assert kind(frame=error_frame("MemoryError", frames=trace)) is FailureKind.MEMORY_LIMIT


def test_memory_error_class_of_a_library_is_a_runtime_error() -> None:
    frame = error_frame("MemoryError", module="somelib")
    assert kind(frame=frame) is FailureKind.RUNTIME_ERROR


def test_killed_from_outside() -> None:
    failure = map_container_outcome(None, signals(exit_code=137))
    assert failure is not None and failure.kind is FailureKind.SANDBOX_CRASH
    assert failure.details["signal"] == "SIGKILL" and failure.retryable


def test_seccomp_kill_is_policy_violation() -> None:
    assert kind(exit_code=128 + 31) is FailureKind.POLICY_VIOLATION


def test_other_signal_is_sandbox_crash() -> None:
    assert kind(exit_code=128 + 11) is FailureKind.SANDBOX_CRASH


def test_status_unknown_is_sandbox_crash() -> None:
    assert kind() is FailureKind.SANDBOX_CRASH


def test_code_exiting_the_interpreter() -> None:
    assert kind(exit_code=3) is FailureKind.RUNTIME_ERROR
    assert kind(exit_code=0) is None


def test_runner_that_cannot_start_is_infra_unavailable() -> None:
    # Its fatal frame before "ready" (seccomp, say); one during a job is a forged frame.
    failure = map_container_outcome(RunnerStartError("seccomp: ImportError"), signals())
    assert failure is not None and failure.kind is FailureKind.INFRA_UNAVAILABLE


def test_garbage_on_the_runners_channel_is_policy_violation() -> None:
    # Only the code can write it (the runner's frames are always readable): a retry
    # would run code that writes it again.
    failure = map_container_outcome(None, signals(protocol_error="unreadable frame (11 bytes)"))
    assert failure is not None and failure.kind is FailureKind.POLICY_VIOLATION
    assert not failure.retryable
    assert failure.details == {"attempted": "write to the runner's channel"}


def test_a_broken_engine_stream_is_sandbox_crash() -> None:
    failure = map_container_outcome(None, signals(stream_error="a multiplexed frame larger"))
    assert failure is not None and failure.kind is FailureKind.SANDBOX_CRASH
    assert failure.retryable


def test_forged_tool_frame_is_policy_violation() -> None:
    assert kind(forged_frame="a tool call numbered 9") is FailureKind.POLICY_VIOLATION


def test_uncaught_tool_answer_is_tool_error_with_the_tools_kind() -> None:
    injected = InjectedToolError(
        seq=2, tool="fetch", exception_type="ConnectionError", message="m", kind="THROTTLED"
    )
    frame = error_frame("ConnectionError", tool_seq=2, frames=[{"line": 4}])
    failure = map_container_outcome(None, signals(frame=frame, tool_errors={2: injected}))
    assert failure is not None and failure.kind is FailureKind.TOOL_ERROR
    assert failure.details == {"tool": "fetch", "call_id": "2", "tool_kind": "THROTTLED"}
    assert failure.retryable and failure.line == 4


def test_a_tool_mark_without_an_error_answer_is_a_plain_runtime_error() -> None:
    # The code can set the runner's mark on its own exceptions; only the host's records count.
    frame = error_frame("ValueError", tool_seq=1)
    assert kind(frame=frame) is FailureKind.RUNTIME_ERROR


def test_syntax_error_frame() -> None:
    frame = error_frame("SyntaxError", syntax=True, frames=[{"line": 3, "column": 5}])
    failure = map_container_outcome(None, signals(frame=frame))
    assert failure is not None and failure.kind is FailureKind.SYNTAX_ERROR
    assert failure.line == 3


def test_runtime_error_frame_keeps_frames() -> None:
    frame = error_frame("KeyError", frames=[{"line": 5}, {"line": 2, "function_name": "f"}])
    failure = map_container_outcome(None, signals(frame=frame))
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR
    assert [f.line for f in failure.frames] == [5, 2]


def test_blocked_attempt_that_failed_is_policy_violation() -> None:
    frame = error_frame("PermissionError", os_error=True)
    frame["blocked"] = ["open a network socket (AF_INET)"]
    failure = map_container_outcome(None, signals(frame=frame))
    assert failure is not None and failure.kind is FailureKind.POLICY_VIOLATION
    assert "AF_INET" in failure.details["attempted"]


def test_blocked_attempt_then_unrelated_error_is_runtime_error() -> None:
    frame = error_frame("ValueError")
    frame["blocked"] = ["open a network socket (AF_INET)"]
    assert kind(frame=frame) is FailureKind.RUNTIME_ERROR


def test_recursion_error_names_the_limit() -> None:
    failure = map_container_outcome(None, signals(frame=error_frame("RecursionError")))
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR
    assert failure.details["limit"] == "max_recursion_depth"


@pytest.mark.parametrize(
    ("type_name", "message", "limit"),
    [
        ("BlockingIOError", "[Errno 11] Resource temporarily unavailable", "pids"),
        ("RuntimeError", "can't start new thread", "pids"),
        ("OSError", "[Errno 28] No space left on device", "disk_bytes"),
        ("OSError", "[Errno 27] File too large", "disk_bytes"),
    ],
)
def test_an_error_a_cap_explains_names_the_cap(type_name: str, message: str, limit: str) -> None:
    frame = error_frame(type_name, message=message)
    failure = map_container_outcome(None, signals(frame=frame))
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR
    assert failure.details["limit"] == limit
    assert failure.details["limit_value"] == str(getattr(LIMITS, limit))
    assert f"limit of {getattr(LIMITS, limit)} " in failure.message


@pytest.mark.parametrize(
    ("type_name", "message"),
    [
        ("OSError", "[Errno 2] No such file or directory"),
        ("BlockingIOError", "[Errno 115] Operation now in progress"),
        ("ValueError", "[Errno 28] No space left on device"),  # not an OSError
    ],
)
def test_an_error_no_cap_explains_names_none(type_name: str, message: str) -> None:
    failure = map_container_outcome(None, signals(frame=error_frame(type_name, message=message)))
    assert failure is not None and "limit" not in failure.details


def test_system_exit_frame() -> None:
    frame = error_frame("SystemExit")
    frame["exit_code"] = 4
    failure = map_container_outcome(None, signals(frame=frame))
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR
    assert failure.details["exit_code"] == "4"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (docker.errors.ImageNotFound("no such image"), FailureKind.INFRA_UNAVAILABLE),
        (docker.errors.NotFound("no such container"), FailureKind.SANDBOX_CRASH),
        (api_error(409), FailureKind.SANDBOX_CRASH),
        (api_error(404), FailureKind.SANDBOX_CRASH),
        (api_error(500), FailureKind.INFRA_UNAVAILABLE),
        (api_error(400), FailureKind.INFRA_UNAVAILABLE),
        (docker.errors.DockerException("no engine"), FailureKind.INFRA_UNAVAILABLE),
        (requests.exceptions.ConnectionError("refused"), FailureKind.INFRA_UNAVAILABLE),
        (requests.exceptions.ReadTimeout("slow"), FailureKind.INFRA_UNAVAILABLE),
        (RunnerStartError("no ready frame"), FailureKind.INFRA_UNAVAILABLE),
        (BrokenPipeError(), FailureKind.SANDBOX_CRASH),
    ],
)
def test_engine_errors(exc: BaseException, expected: FailureKind) -> None:
    failure = map_container_outcome(exc, signals())
    assert failure is not None and failure.kind is expected
    if expected is FailureKind.INFRA_UNAVAILABLE:
        assert failure.retryable and failure.retry_after_ms > 0


def test_image_missing_says_how_to_fix_it() -> None:
    failure = map_container_outcome(docker.errors.ImageNotFound("x"), signals())
    assert failure is not None and "make image" in failure.message


def test_an_unknown_exception_is_a_bug() -> None:
    with pytest.raises(TypeError):
        map_container_outcome(ValueError("not an engine error"), signals())
