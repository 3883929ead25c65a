"""Maps every way a Monty run can end to the failure taxonomy. The only place that knows
Monty's error classes. Most specific signal first; message text is only ever a second
signal beside a type.

A kind the code could claim for itself is decided by the sandbox's own signals, never by
what the code raises or prints: a limit (MEMORY_LIMIT, TIMEOUT) by the session's sealed
limits (sealed.py) or the host's own timer; a POLICY_VIOLATION by the host's record of
the calls it denied, and only when the error the run died of is that denial's; a
"Monty cannot run this" reading of an AttributeError or NameError (UNSUPPORTED) only
when Monty raised it, not a `raise` in the code."""

from __future__ import annotations

import builtins
import importlib
import re
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pydantic_monty as pm

from sandbox.backends.monty import divergence
from sandbox.backends.monty.sealed import SealedLimits
from sandbox.backends.outcome_parts import (
    CODE_FILENAME,
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


class DeniedCalls:
    """The OS calls the host denied in one run, kept bounded: the code chooses their
    arguments (a 10 MB path each, as often as it likes), so only the first and the latest
    MAX_KEPT / 2 are kept (the latest: the one a run dies of), each shown in at most
    MAX_CHARS; `count` counts them all."""

    MAX_KEPT = 20
    MAX_CHARS = 200

    def __init__(self) -> None:
        self.count = 0
        # (what was attempted, e.g. "open('/etc/passwd')"; what the denial's error names)
        self._first: list[tuple[str, tuple[str, ...]]] = []
        self._latest: deque[tuple[str, tuple[str, ...]]] = deque(maxlen=self.MAX_KEPT // 2)

    def __bool__(self) -> bool:
        return self.count > 0

    def add(self, name: str, args: tuple[Any, ...]) -> None:
        self.count += 1
        shown = [_clipped_repr(a, self.MAX_CHARS) for a in args[:2]]
        attempt = f"{name}({', '.join(shown)})"
        if len(attempt) > self.MAX_CHARS:
            attempt = attempt[: self.MAX_CHARS - 4] + "...)"
        # Monty's denial names the path ("Permission denied: '/etc/passwd'") or the
        # function ("'os.getenv' is not supported in this environment").
        kept = (attempt, (f"'{name}'", *shown[:1]))
        if len(self._first) < self.MAX_KEPT - self.MAX_KEPT // 2:
            self._first.append(kept)
        else:
            self._latest.append(kept)

    @property
    def attempts(self) -> list[str]:
        return [attempt for attempt, _ in (*self._first, *self._latest)]

    def named_by(self, message: str) -> str | None:
        """The attempt whose denial `message` is (the latest that matches), if any."""
        for attempt, needles in reversed((*self._first, *self._latest)):
            if any(needle in message for needle in needles):
                return attempt
        return None


def _clipped_repr(value: Any, max_chars: int) -> str:
    """repr(str(value)) in at most about `max_chars` (its head; never raises)."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # e.g. an int past the int-to-text limit
        return f"<{type(value).__name__}>"
    shown = repr(text[: max_chars + 1])
    return shown if len(text) <= max_chars else shown[: max_chars - 1]


@dataclass(kw_only=True)
class RunSignals:
    """What the host saw while the run went on, besides the exception."""

    limits: EffectiveLimits
    # The limits the session enforces (None: unknown, so no error counts as a limit).
    sealed: SealedLimits | None = None
    code: str = ""  # the code this feed ran, to tell Monty's errors from its own raises
    output_exceeded: bool = False
    host_timed_out: bool = False  # our wall-clock backstop cancelled the run
    sleep_exceeded: bool = False  # a tool run asked for more sleep than its budget
    elapsed_s: float = 0.0
    denied: DeniedCalls = field(default_factory=DeniedCalls)
    tool_errors: list[InjectedToolError] = field(default_factory=list)  # in call order
    # A container runs the code if this run is UNSUPPORTED (RunSpec.fallback_follows).
    fallback_follows: bool = False


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
    """The failure for a run that raised `exc` (None: it completed), given `signals`.
    With a container to follow, a time limit is UNSUPPORTED: Monty is slower than
    CPython (divergence "slower"), and the container is given the whole budget."""
    failure = _map(exc, signals)
    if signals.fallback_follows and failure is not None and failure.kind is FailureKind.TIMEOUT:
        entry = divergence.BY_ID["slower"]
        return Failure.of(
            FailureKind.UNSUPPORTED,
            f"Monty ran out of time ({failure.message}); CPython is faster",
            exception_type=failure.exception_type,
            frames=failure.frames,
            details={**failure.details, "divergence": entry.id},
        )
    return failure


def _map(exc: BaseException | None, signals: RunSignals) -> Failure | None:
    limits = signals.limits
    if signals.output_exceeded:
        return output_limit_failure(limits)
    if signals.host_timed_out:
        return _timeout(limits, "the wall-clock budget ran out", ())
    if signals.sleep_exceeded:
        return _timeout(limits, "the run's sleeps add up to more than its budget", ())
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
    sealed = signals.sealed

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
    if type_name == "TimeoutError" and sealed is not None:
        # The feed's time limit stops the code wherever it is: Monty reports no frame.
        if not frames and sealed.is_time_limit(message):
            return _timeout(limits, "the code ran past it", ())
        if sealed.is_sleep_limit(message):
            return _timeout(limits, "its sleeps add up to more than the budget", frames)
    if type_name == "MemoryError" and sealed is not None and sealed.is_memory_limit(message):
        return Failure.of(
            FailureKind.MEMORY_LIMIT,
            one_line(
                f"MemoryError: the code needed more than its {limits.memory_bytes}-byte "
                "memory limit",
                frames,
            ),
            exception_type=type_name,
            frames=frames,
            details={"limit": "memory_bytes", "limit_value": str(limits.memory_bytes)},
        )
    attempt = signals.denied.named_by(message) if type_name in _DENIAL_TYPES else None
    if attempt is not None:
        return Failure.of(
            FailureKind.POLICY_VIOLATION,
            one_line(f"the policy forbids {attempt}", frames),
            exception_type=type_name,
            frames=frames,
            details={"attempted": attempt},
        )
    missing = _missing_feature(type_name, message, frames, signals.code)
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
    entry = divergence.spurious_error(type_name, message, frames[-1].source_line if frames else "")
    if entry is not None:
        if signals.fallback_follows:
            text = f"Monty may be wrong here ({entry.construct}): {type_name}: {message}"
            return raised(FailureKind.UNSUPPORTED, text, divergence=entry.id)
        # Monty's own answer, as asked; the doubt is in the details (and the result).
        return runtime_error_failure(
            limits, type_name, message, frames, details={"divergence": entry.id}
        )
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


def _missing_feature(
    type_name: str, message: str, frames: tuple[Frame, ...], code: str
) -> str | None:
    """What CPython has and Monty lacks, if that is why the run failed.

    A ModuleNotFoundError or ImportError is one whoever raised it: the code needs a module
    this backend does not have (a library's `raise ImportError` for an optional dependency
    too), and a container, where the code runs for real, tells the rest. An AttributeError
    or NameError says Monty lacks something only when Monty raised it."""
    if type_name in ("ModuleNotFoundError", "ImportError"):
        match = _MISSING_MODULE.search(message)
        return f"module {match.group(1)}" if match else "a module"
    if type_name == "NotImplementedError" and (not frames or not frames[-1].function_name):
        # Raised while compiling (no function frame): syntax Monty does not implement.
        return "syntax"
    if type_name in ("AttributeError", "NameError") and _raised_by_the_code(frames, code):
        return None
    if type_name == "AttributeError":
        match = _MISSING_MODULE_ATTR.search(message)
        if match and _cpython_module_has(match.group(1), match.group(2)):
            return f"{match.group(1)}.{match.group(2)}"
        match = _MISSING_TYPE_ATTR.search(message)
        if (
            match
            and not _binds(code, match.group(1).rpartition(".")[2])
            and _cpython_has(match.group(1), match.group(2))
        ):
            return f"{match.group(1)}.{match.group(2)}"
    if type_name == "NameError":
        match = _UNDEFINED_NAME.search(message)
        if match and hasattr(builtins, match.group(1)):
            return f"builtin {match.group(1)}"
    if type_name == "RuntimeError" and not frames and "Internal error in monty" in message:
        return "interpreter feature"
    return None


# How far back from an error's position the code is read to find a `raise` before it.
_LOOKBACK_CHARS = 4096
_COMMENT = re.compile(r"#[^'\"\n]*$", re.MULTILINE)
_RAISE_BEFORE = re.compile(r"(?:^|[^\w.])(?:raise|except)[\s(\\]*$")


def _raised_by_the_code(frames: tuple[Frame, ...], code: str) -> bool:
    """Whether the innermost frame is a `raise` in `code` (Monty places a raise at its
    exception expression and a bare re-raise at the `except` clause), or may be: a frame
    this feed's code does not hold (an earlier feed's function, in a session) counts as
    the code's, so only an error Monty demonstrably raised here reads as Monty's.

    Reads the text before the frame's position, not a parse of the whole code: a parse
    costs as much as the code is long, on the event loop."""
    if not frames:
        return False  # raised while compiling
    where = frames[-1]
    lines = code.split("\n", where.line)[: where.line]
    if len(lines) < where.line or lines[-1].rstrip() != where.source_line.rstrip():
        return True
    lines[-1] = lines[-1][: max(0, where.column - 1)]
    before = "\n".join(lines)[-_LOOKBACK_CHARS:]
    return bool(_RAISE_BEFORE.search(_COMMENT.sub("", before)))


def _binds(code: str, name: str) -> bool:
    """Whether `code` binds `name` itself (a class of its own named like a builtin type).
    `from collections import Counter` does not count: in Monty that is the real type,
    whose missing method is Monty's gap (divergence "missing-method")."""
    pattern = rf"\b(?:class|def|as|for|global|nonlocal)\s+{name}\b|\b{name}\s*(?::=|=(?!=))"
    return re.search(pattern, code) is not None


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
            # Monty names each fed snippet (<python-input-N>); the code is one file to us,
            # named as the container's runner names it (the request may rename it).
            filename=CODE_FILENAME,
            line=f.line,
            column=f.column,
            end_line=f.end_line,
            end_column=f.end_column,
            # "" at the top level, as the container's runner says it.
            function_name="" if f.function_name == "<module>" else f.function_name or "",
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
    doubt = failure.details.get("divergence") if failure is not None else None
    return ExecutionResult(
        ok=failure is None,
        backend=Backend.MONTY,
        fidelity_warning=divergence.warning(doubt) if doubt else "",
        stdout=stdout,
        stdout_truncated=stdout_truncated,
        stderr=stderr,
        stderr_truncated=stderr_truncated,
        result_json=result_json,
        exit_code=0 if failure is None else 1,
        failure=failure,
        usage=Usage(wall_ms=round(elapsed_s * 1000)),
    )
