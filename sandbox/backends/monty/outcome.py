"""Maps every way a Monty run can end to the failure taxonomy. The only place that knows
Monty's error classes. Most specific signal first; message text is only ever a second
signal beside a type."""

from __future__ import annotations

import builtins
import importlib
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import pydantic_monty as pm

from sandbox.backends.outcome_parts import (
    first_line,
    one_line,
    output_limit_failure,
    result_too_large_failure,
    runtime_error_failure,
    tool_failure,
)
from sandbox.backends.tools import InjectedToolError
from sandbox.backends.values import value_to_json
from sandbox.core.limits import EffectiveLimits
from sandbox_client.protocol.models import (
    Backend,
    ExecutionResult,
    Failure,
    FailureKind,
    Frame,
    Usage,
)


@dataclass(kw_only=True)
class RunSignals:
    """What the host saw while the run went on, besides the exception."""

    limits: EffectiveLimits
    output_exceeded: bool = False
    host_timed_out: bool = False  # our wall-clock backstop cancelled the run
    elapsed_s: float = 0.0
    denied_os_calls: list[str] = field(default_factory=list)  # e.g. "open('/etc/passwd')"
    tool_errors: list[InjectedToolError] = field(default_factory=list)  # in call order


# Exceptions a denied OS call surfaces as inside Monty.
_DENIAL_TYPES = frozenset(
    {"PermissionError", "OSError", "FileNotFoundError", "RuntimeError", "NotADirectoryError"}
)
_MISSING_MODULE_ATTR = re.compile(r"module '([\w.]+)' has no attribute '(\w+)'")
_MISSING_TYPE_ATTR = re.compile(
    r"^(?:type object )?'([\w.]+)'(?: object)? has no attribute '(\w+)'"
)
# Where the types Monty names in its messages live in CPython.
_TYPE_HOMES = ("builtins", "collections", "re", "datetime", "decimal", "fractions", "pathlib")
_UNDEFINED_NAME = re.compile(r"name '(\w+)' is not defined")
_MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")
# Monty phrases its own limits this way; a user's `raise MemoryError()` does not.
_LIMIT_MESSAGE = re.compile(r"\blimit exceeded\b")
# pydantic-monty's pool counts host round trips per checkout (`max_suspensions`).
_SUSPENSION_LIMIT = re.compile(r"^suspension limit (\d+) exceeded$")

# Every MontyError subclass Monty ships, mapped explicitly; test_monty_outcome fails
# when pydantic_monty grows one this table does not name.
ERROR_CLASS_KINDS: dict[type[pm.MontyError], FailureKind | None] = {
    pm.MontySyntaxError: FailureKind.SYNTAX_ERROR,
    pm.MontyTypingError: FailureKind.SYNTAX_ERROR,
    pm.MontyRuntimeError: None,  # decided by the inner exception, below
    pm.MontyConversionError: FailureKind.INVALID_REQUEST,
    pm.MontyCrashedError: FailureKind.SANDBOX_CRASH,
    pm.MontyDisconnectError: FailureKind.SANDBOX_CRASH,
    pm.MontyShutdown: FailureKind.INFRA_UNAVAILABLE,
}


def map_monty_outcome(exc: BaseException | None, signals: RunSignals) -> Failure | None:
    """The failure for a run that raised `exc` (None: it completed), given `signals`."""
    limits = signals.limits
    if signals.output_exceeded:
        return output_limit_failure(limits)
    if signals.host_timed_out:
        return _timeout(limits, "the wall-clock budget ran out", ())
    if exc is None:
        return None
    if not isinstance(exc, pm.MontyError):
        raise TypeError(f"not a Monty outcome: {type(exc).__name__}") from exc

    if isinstance(exc, pm.MontyCrashedError):
        if exc.timed_out or signals.elapsed_s >= limits.wall_time_s:
            return _timeout(limits, "the worker was stopped at the time limit", ())
        return Failure.of(
            FailureKind.SANDBOX_CRASH,
            f"the Monty worker died ({exc}); nothing in the code is known to have caused it",
            details={"exit_status": str(exc.exit_status)},
        )
    if isinstance(exc, pm.MontySyntaxError):
        frames = _frames(exc)
        return Failure.of(
            FailureKind.SYNTAX_ERROR,
            one_line(f"SyntaxError: {exc}", frames),
            exception_type="SyntaxError",
            frames=frames,
        )
    if isinstance(exc, pm.MontyTypingError):
        return Failure.of(
            FailureKind.SYNTAX_ERROR,
            first_line(f"type check failed: {exc.display()}"),
            exception_type="TypeCheckError",
        )
    if isinstance(exc, pm.MontyRuntimeError):
        return _runtime(exc, signals)

    kind = ERROR_CLASS_KINDS.get(type(exc))
    if kind is None:
        kind = FailureKind.SANDBOX_CRASH
    return Failure.of(kind, first_line(f"{type(exc).__name__}: {exc}"))


def _runtime(exc: pm.MontyRuntimeError, signals: RunSignals) -> Failure:
    limits = signals.limits
    inner = exc.exception()
    type_name = type(inner).__name__
    message = str(inner)
    frames = _frames(exc)
    is_limit = bool(_LIMIT_MESSAGE.search(message)) or not frames

    def raised(kind: FailureKind, text: str, **details: str) -> Failure:
        """`kind` for the inner exception, where it was raised."""
        return Failure.of(
            kind, one_line(text, frames), exception_type=type_name, frames=frames, details=details
        )

    tool_error = _uncaught_tool_error(type_name, message, signals)
    if tool_error is not None:
        return tool_failure(
            tool=tool_error.tool,
            seq=tool_error.seq,
            exception_type=tool_error.exception_type,
            message=tool_error.message,
            tool_kind=tool_error.kind,
            frames=frames,
        )
    if type_name == "TimeoutError" and is_limit:
        return _timeout(limits, message, frames)
    if type_name == "MemoryError" and is_limit:
        text, cap = f"MemoryError: {message}", str(limits.memory_bytes)
        return raised(FailureKind.MEMORY_LIMIT, text, limit="memory_bytes", limit_value=cap)
    if signals.denied_os_calls and type_name in _DENIAL_TYPES:
        attempt = signals.denied_os_calls[0]
        return raised(
            FailureKind.POLICY_VIOLATION, f"the policy forbids {attempt}", attempted=attempt
        )
    missing = _missing_feature(type_name, message, frames)
    if missing is not None:
        text = f"Monty cannot run this: {type_name}: {message}"
        return raised(FailureKind.UNSUPPORTED, text, missing=missing)
    suspensions = _SUSPENSION_LIMIT.search(message) if type_name == "RuntimeError" else None
    if suspensions is not None:
        cap = suspensions.group(1)
        text = (
            f"the run made more than {cap} calls to the host (tool calls, clock reads, "
            "sleeps, input(), file operations), Monty's cap for one run; make fewer, "
            "e.g. by batching them"
        )
        return raised(FailureKind.RUNTIME_ERROR, text, limit="host_calls", limit_value=cap)
    return runtime_error_failure(limits, type_name, message, frames)


def _uncaught_tool_error(
    type_name: str, message: str, signals: RunSignals
) -> InjectedToolError | None:
    """The tool answer the run died of, if it did: the exception we injected, unchanged.
    The latest matching call wins (the code may have caught earlier ones)."""
    for injected in reversed(signals.tool_errors):
        # KeyError renders its argument with repr(): KeyError('k') reads "'k'".
        if injected.exception_type == type_name and message in (
            injected.message,
            repr(injected.message),
        ):
            return injected
    return None


def _missing_feature(type_name: str, message: str, frames: tuple[Frame, ...]) -> str | None:
    """What CPython has and Monty lacks, if that is why the run failed."""
    if type_name in ("ModuleNotFoundError", "ImportError"):
        match = _MISSING_MODULE.search(message)
        return f"module {match.group(1)}" if match else "a module"
    if type_name == "NotImplementedError" and (not frames or not frames[-1].function_name):
        # Raised while compiling (no function frame): syntax Monty does not implement.
        return "syntax"
    if type_name == "AttributeError":
        match = _MISSING_MODULE_ATTR.search(message)
        if match and _cpython_module_has(match.group(1), match.group(2)):
            return f"{match.group(1)}.{match.group(2)}"
        match = _MISSING_TYPE_ATTR.search(message)
        if match and _cpython_has(match.group(1), match.group(2)):
            return f"{match.group(1)}.{match.group(2)}"
    if type_name == "NameError":
        match = _UNDEFINED_NAME.search(message)
        if match and hasattr(builtins, match.group(1)):
            return f"builtin {match.group(1)}"
    if type_name == "RuntimeError" and not frames and "Internal error in monty" in message:
        return "interpreter feature"
    return None


def _cpython_module_has(module_name: str, attribute: str) -> bool:
    """Whether CPython's stdlib module has the attribute Monty said it lacks. Only modules
    the host already imported are inspected: the name comes from the sandbox, and importing
    an arbitrary module on the host has side effects. An unloaded stdlib module is assumed
    to have it, which at worst sends the code to a container that reports the truth."""
    if module_name.split(".")[0] not in sys.stdlib_module_names:
        return False
    module = sys.modules.get(module_name)
    return module is None or hasattr(module, attribute)


def _cpython_has(type_name: str, attribute: str) -> bool:
    """Whether CPython's type of that name has the attribute Monty said it lacks."""
    module_name, _, name = type_name.rpartition(".")
    homes = (module_name,) if module_name else _TYPE_HOMES
    for home in homes:
        if home not in _TYPE_HOMES:
            continue
        candidate = getattr(importlib.import_module(home), name, None)
        if isinstance(candidate, type) and hasattr(candidate, attribute):
            return True
    return False


def _timeout(limits: EffectiveLimits, why: str, frames: tuple[Frame, ...]) -> Failure:
    return Failure.of(
        FailureKind.TIMEOUT,
        one_line(f"time limit of {limits.wall_time_ms} ms exceeded: {why}", frames),
        exception_type="TimeoutError",
        frames=frames,
        details={"limit": "wall_time_ms", "limit_value": str(limits.wall_time_ms)},
    )


def _frames(exc: pm.MontySyntaxError | pm.MontyRuntimeError) -> tuple[Frame, ...]:
    return tuple(
        Frame(
            filename=f.filename,
            line=f.line,
            column=f.column,
            end_line=f.end_line,
            end_column=f.end_column,
            function_name=f.function_name or "",
            source_line=f.source_line or "",
        )
        for f in exc.traceback()
    )


# Our wall-clock backstop fires this long after the policy's budget, so Monty's own
# in-worker limit (which keeps the worker alive) normally wins the race.
HOST_GRACE_S = 0.5


def monty_result(
    value: Any,
    failure: Failure | None,
    *,
    limits: EffectiveLimits,
    elapsed_s: float,
    stdout: str,
    stdout_truncated: bool,
    stderr: str,
    stderr_truncated: bool,
) -> ExecutionResult:
    """The result of a Monty run that ended with `value` (its last expression) or `failure`."""
    result_json = None
    if failure is None and value is not None:
        result_json = value_to_json(value)
        if len(result_json.encode()) > limits.output_bytes:
            result_json = None
            failure = result_too_large_failure(limits)
    return ExecutionResult(
        ok=failure is None,
        backend=Backend.MONTY,
        stdout=stdout,
        stdout_truncated=stdout_truncated,
        stderr=stderr,
        stderr_truncated=stderr_truncated,
        result_json=result_json,
        exit_code=0 if failure is None else 1,
        failure=failure,
        usage=Usage(wall_ms=round(elapsed_s * 1000)),
    )
