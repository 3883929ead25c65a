"""Maps every way a container run can end to the failure taxonomy. The only place that
knows docker-py's error classes, container exit statuses and what the runner's result
frame means (its schema, and the check of a frame against it, are protocol.py's).
Most specific signal first: what the host itself did or saw (its own kill for a time or
output cap, the kernel's OOM flag), then errors talking to the engine, then how the
container ended, then the runner's own frame."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from typing import Any

import docker.errors as de
import requests.exceptions as rq

from sandbox.backends.outcome_parts import (
    first_line,
    one_line,
    output_limit_failure,
    runtime_error_failure,
    tool_failure,
)
from sandbox.backends.tools import InjectedToolError
from sandbox.core.limits import EffectiveLimits
from sandbox_client import Failure, FailureKind, Frame


class RunnerStartError(Exception):
    """A container started but its runner never said it was ready (a broken image, or a
    runtime that cannot run it)."""


# Every exception class docker.errors defines, mapped explicitly; test_container_outcome
# fails when docker-py grows one this table does not name. None: decided below.
ERROR_CLASS_KINDS: dict[type[BaseException], FailureKind | None] = {
    RunnerStartError: FailureKind.INFRA_UNAVAILABLE,
    de.ImageNotFound: FailureKind.INFRA_UNAVAILABLE,  # `make image` was not run
    de.NotFound: FailureKind.SANDBOX_CRASH,  # the container was removed under us
    de.APIError: None,  # by HTTP status
    de.ContainerError: FailureKind.SANDBOX_CRASH,
    de.StreamParseError: FailureKind.SANDBOX_CRASH,
    de.BuildError: FailureKind.INFRA_UNAVAILABLE,
    de.ImageLoadError: FailureKind.INFRA_UNAVAILABLE,
    # Configuration of the engine connection: nothing can run until an operator fixes it.
    de.InvalidVersion: FailureKind.INFRA_UNAVAILABLE,
    de.InvalidRepository: FailureKind.INFRA_UNAVAILABLE,
    de.InvalidConfigFile: FailureKind.INFRA_UNAVAILABLE,
    de.InvalidArgument: FailureKind.INFRA_UNAVAILABLE,
    de.DeprecatedMethod: FailureKind.INFRA_UNAVAILABLE,
    de.TLSParameterError: FailureKind.INFRA_UNAVAILABLE,
    de.NullResource: FailureKind.INFRA_UNAVAILABLE,
    de.MissingContextParameter: FailureKind.INFRA_UNAVAILABLE,
    de.ContextAlreadyExists: FailureKind.INFRA_UNAVAILABLE,
    de.ContextException: FailureKind.INFRA_UNAVAILABLE,
    de.ContextNotFound: FailureKind.INFRA_UNAVAILABLE,
    de.DockerException: FailureKind.INFRA_UNAVAILABLE,  # e.g. from_env with no engine
    # The engine's socket (requests/urllib3 underneath docker-py).
    rq.ConnectionError: FailureKind.INFRA_UNAVAILABLE,
    rq.Timeout: FailureKind.INFRA_UNAVAILABLE,
    rq.RequestException: FailureKind.INFRA_UNAVAILABLE,
    # The attach socket to the runner: the container went away mid-conversation.
    ConnectionError: FailureKind.SANDBOX_CRASH,
    OSError: FailureKind.SANDBOX_CRASH,
}

# How long a caller should wait before retrying after an engine or pool problem.
INFRA_RETRY_AFTER_MS = 1000


@dataclass(kw_only=True)
class ContainerSignals:
    """What the host saw while a run went on."""

    limits: EffectiveLimits
    frame: dict[str, Any] | None = None  # the runner's result frame, if one came
    exit_code: int | None = None  # the container's status, when it ended without a frame
    oom_killed: bool = False  # State.OOMKilled
    host_timed_out: bool = False  # we killed it at the wall-clock budget
    output_exceeded: bool = False  # we killed it at the output cap
    # The runner's channel carried a line that is not a frame: the code wrote to the
    # channel's fd (the runner's own frames are always readable and fit the line cap).
    protocol_error: str = ""
    stream_error: str = ""  # the engine's stream itself broke (not the code's doing)
    image: str = ""
    elapsed_s: float = 0.0  # the code's time: waits for tool answers left out
    # Tool runs: error answers given, by call number; time spent waiting for answers;
    # a call frame that broke the protocol (only the code can write one); whether the
    # host stopped the run itself (cancelled, or its ToolHost failed).
    tool_errors: dict[int, InjectedToolError] = field(default_factory=dict)
    tool_wait_s: float = 0.0
    forged_frame: str = ""  # a call or fatal frame only the code can have written
    relay_stopped: bool = False
    # The supervisor's exit frame: how the runner, the code's process, ended (its signal
    # or status; "idle": before this job, which then never ran).
    runner_exit: dict[str, Any] | None = None
    seq: int = 1  # this job's number in its container (a session's runs count up)


def map_container_outcome(exc: BaseException | None, signals: ContainerSignals) -> Failure | None:
    """The failure for a run that raised `exc` talking to the engine or the runner (None:
    no error), given `signals`. None means the code ran to completion."""
    limits = signals.limits
    if signals.output_exceeded:
        return output_limit_failure(limits)
    if signals.host_timed_out:
        return _timeout(limits)
    if exc is not None:
        return _engine_failure(exc, signals)
    if signals.forged_frame:
        return _channel_tampering(signals.forged_frame, "forge a runner frame")
    if signals.oom_killed and (signals.frame is None or not signals.frame.get("ok")):
        return _memory(limits, "the container was killed at its memory cap", None)
    if signals.protocol_error:
        # Not a crash: the same code writes the same bytes again, so a retry cannot help.
        return _channel_tampering(signals.protocol_error, "write to the runner's channel")
    if signals.stream_error:
        return Failure.of(
            FailureKind.SANDBOX_CRASH,
            f"the container's output stream broke: {signals.stream_error}; nothing in the "
            "code is known to have caused it",
        )
    if signals.runner_exit is not None:
        return _runner_ended(signals.runner_exit, signals)
    if signals.frame is None:
        return _no_frame(signals)
    return _from_frame(signals.frame, signals)


def _runner_ended(frame: dict[str, Any], signals: ContainerSignals) -> Failure | None:
    """The code's process died, as the supervisor (out of its reach) saw it. A signal it
    got from inside the container is the code's doing: the sandbox sends none (a kill
    from outside ends the supervisor too, and the container with it)."""
    signum, status = frame.get("signal"), frame.get("status")
    if frame.get("idle") is True:
        how = f"killed by {_signal_name(signum)}" if type(signum) is int else f"status {status}"
        if signals.seq > 1:
            return Failure.of(
                FailureKind.CORRUPT_STATE,
                f"the session's interpreter ended between executions ({how}); "
                "its state is gone and this run did not start",
            )
        return Failure.of(
            FailureKind.SANDBOX_CRASH,
            f"the sandbox's runner ended before the run started ({how}); nothing ran",
        )
    if type(signum) is not int:
        signals.exit_code = status if type(status) is int else 1
        return _no_frame(signals)
    name = _signal_name(signum)
    details = {"signal": name, "exit_code": str(128 + signum)}
    if signum == signal.SIGSYS:
        return Failure.of(
            FailureKind.POLICY_VIOLATION,
            "the code made a system call the sandbox forbids and was killed for it (SIGSYS)",
            details=details,
        )
    return Failure.of(
        FailureKind.RUNTIME_ERROR,
        f"the code's process was killed by {name} ({_SIGNAL_CAUSES.get(signum, 'a signal')}) "
        "before it finished; the sandbox sent no signal",
        exception_type=name,
        details=details,
    )


_SIGNAL_CAUSES: dict[int, str] = {
    signal.SIGSEGV: "an invalid memory access",
    signal.SIGBUS: "an invalid memory access",
    signal.SIGABRT: "an abort",
    signal.SIGFPE: "an arithmetic fault",
    signal.SIGILL: "an illegal instruction",
    signal.SIGKILL: "a kill from inside the sandbox",
}


def _channel_tampering(what: str, attempted: str) -> Failure:
    return Failure.of(
        FailureKind.POLICY_VIOLATION,
        f"the code wrote to the sandbox runner's private channel and was stopped: {what}",
        details={"attempted": attempted},
    )


def _engine_failure(exc: BaseException, signals: ContainerSignals) -> Failure:
    kind = _class_kind(exc)
    if kind is None:
        raise TypeError(f"not a container outcome: {type(exc).__name__}") from exc
    if isinstance(exc, de.ImageNotFound):
        return Failure.of(
            kind,
            f"the sandbox image {signals.image or '(unknown)'} is missing; "
            "build it with `make image`",
            retry_after_ms=INFRA_RETRY_AFTER_MS,
            details={"image": signals.image},
        )
    if kind is FailureKind.INFRA_UNAVAILABLE:
        return Failure.of(
            kind,
            f"the container engine cannot serve now ({type(exc).__name__}: {first_line(str(exc))})",
            retry_after_ms=INFRA_RETRY_AFTER_MS,
        )
    return Failure.of(
        kind,
        f"the container went away mid-run ({type(exc).__name__}); nothing in the code is known "
        "to have caused it",
    )


def _class_kind(exc: BaseException) -> FailureKind | None:
    for cls in type(exc).__mro__:
        if cls in ERROR_CLASS_KINDS:
            kind = ERROR_CLASS_KINDS[cls]
            if kind is None and isinstance(exc, de.APIError):
                return _api_status_kind(exc)
            return kind
    return None


def _api_status_kind(exc: de.APIError) -> FailureKind:
    # 404: the container vanished; 409: it is no longer running (killed from outside).
    if exc.status_code in (404, 409):
        return FailureKind.SANDBOX_CRASH
    return FailureKind.INFRA_UNAVAILABLE


def _no_frame(signals: ContainerSignals) -> Failure | None:
    status = signals.exit_code
    if status is None:
        return Failure.of(
            FailureKind.SANDBOX_CRASH,
            "the container ended without a result and its status is unknown",
        )
    if status > 128:
        return _signalled(status - 128, status)
    if status == 0:
        return None  # the code ended the interpreter itself with os._exit(0)
    return Failure.of(
        FailureKind.RUNTIME_ERROR,
        f"the code ended the interpreter with exit status {status} before finishing",
        exception_type="SystemExit",
        details={"exit_code": str(status)},
    )


def _signalled(signum: int, status: int) -> Failure:
    name = _signal_name(signum)
    if signum == signal.SIGSYS:
        return Failure.of(
            FailureKind.POLICY_VIOLATION,
            "the code made a system call the sandbox forbids and was killed for it (SIGSYS)",
            details={"signal": name, "exit_code": str(status)},
        )
    why = "killed from outside" if signum == signal.SIGKILL else f"died of {name}"
    return Failure.of(
        FailureKind.SANDBOX_CRASH,
        f"the sandbox was {why} before the code finished",
        details={"signal": name, "exit_code": str(status)},
    )


def _from_frame(frame: dict[str, Any], signals: ContainerSignals) -> Failure | None:
    limits = signals.limits
    if frame.get("ok"):
        if "value_bytes" in frame:
            return Failure.of(
                FailureKind.OUTPUT_LIMIT,
                f"the result ({frame['value_bytes']} bytes) exceeded the "
                f"{limits.output_bytes}-byte output cap",
                details={"limit": "output_bytes", "part": "result"},
            )
        return None
    error: dict[str, Any] = frame.get("error") or {}
    type_name = str(error.get("type") or "Exception")
    message = str(error.get("message") or "")
    frames = _frames(error.get("frames") or [])
    # Refused syscalls the supervisor saw (from outside the code's process), then what
    # the runner's audit hook recorded.
    blocked = [str(b) for b in (frame.get("syscalls") or []) + (frame.get("blocked") or [])]

    if error.get("syntax"):
        return Failure.of(
            FailureKind.SYNTAX_ERROR,
            one_line(f"{type_name}: {message}", frames),
            exception_type=type_name,
            frames=frames,
        )
    # The runner marks the exceptions it raised as tool answers; the mark only counts
    # for a call this host really answered with an error.
    tool_seq = error.get("tool_seq")
    injected = signals.tool_errors.get(tool_seq) if type(tool_seq) is int else None
    if injected is not None:
        return tool_failure(
            tool=injected.tool,
            seq=injected.seq,
            exception_type=type_name,
            # The answer's own words, as Monty shows them (KeyError's str() quotes).
            message=injected.message if type_name == injected.exception_type else message,
            tool_kind=injected.kind,
            frames=frames,
        )
    denied_import = str(error.get("denied_import") or "")
    if denied_import:
        # The runner refused to load a module the policy denies (its ImportError, or
        # what the code raised from it).
        return Failure.of(
            FailureKind.POLICY_VIOLATION,
            one_line(
                f"import of {denied_import!r} is forbidden by policy ({type_name}: {message})",
                frames,
            ),
            exception_type=type_name,
            frames=frames,
            details={"rule": "import", "target": denied_import},
        )
    memory_error = type_name == "MemoryError" and error.get("module") == "builtins"
    if memory_error and not _raised_by_the_code(frames):
        return _memory(limits, message or "out of memory", frames)
    if blocked and error.get("os_error"):
        return Failure.of(
            FailureKind.POLICY_VIOLATION,
            one_line(f"the policy forbids this: {blocked[0]} ({type_name}: {message})", frames),
            exception_type=type_name,
            frames=frames,
            details={"attempted": "; ".join(blocked[:5])},
        )
    details = None
    if type_name == "SystemExit":
        status = frame.get("exit_code", 1)
        details = {"exit_code": str(status)}
        message = f"exit status {status}" + (f": {message}" if message else "")
    return runtime_error_failure(limits, type_name, message, frames, details)


_RAISE = re.compile(r"raise\b")


def _raised_by_the_code(frames: tuple[Frame, ...]) -> bool:
    """Whether the innermost frame is a `raise` statement of the code's (CPython places a
    raise, bare or not, at its statement): the code's own `raise MemoryError`, which is
    its error, not the interpreter failing to allocate."""
    if not frames:
        return False
    where = frames[-1]
    return _RAISE.match(where.source_line, max(0, where.column - 1)) is not None


def _timeout(limits: EffectiveLimits) -> Failure:
    return Failure.of(
        FailureKind.TIMEOUT,
        f"time limit of {limits.wall_time_ms} ms exceeded; the container was stopped",
        exception_type="TimeoutError",
        details={"limit": "wall_time_ms", "limit_value": str(limits.wall_time_ms)},
    )


def _memory(limits: EffectiveLimits, why: str, frames: tuple[Frame, ...] | None) -> Failure:
    return Failure.of(
        FailureKind.MEMORY_LIMIT,
        one_line(f"memory limit of {limits.memory_bytes} bytes exceeded: {why}", frames or ()),
        exception_type="MemoryError",
        frames=frames or (),
        details={"limit": "memory_bytes", "limit_value": str(limits.memory_bytes)},
    )


def _frames(raw: list[dict[str, Any]]) -> tuple[Frame, ...]:
    return tuple(
        Frame(
            filename="<code>",
            line=int(f.get("line") or 0),
            column=int(f.get("column") or 0),
            end_line=int(f.get("end_line") or 0),
            end_column=int(f.get("end_column") or 0),
            function_name=str(f.get("function_name") or ""),
            source_line=str(f.get("source_line") or ""),
        )
        for f in raw
        if isinstance(f, dict)
    )


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
