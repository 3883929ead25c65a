"""The frame schema of the conversations between the host, the sandbox supervisor and the
runner, shared by all three: the host imports it as `sandbox.backends.container.protocol`,
the image ships this very file beside the supervisor and the runner (/opt/sandbox/, see
images/Dockerfile), which import it as `protocol`. Standard library only, for that reason.

Two processes in the container. The supervisor (images/runner/supervisor.py, pid 1) owns
the channel to the host (the container's stdin and stdout) and runs the runner
(images/runner/sandbox_runner.py) as its child, under another uid, over pipes of its
own; the code runs in the runner and cannot reach the supervisor or its channel. The
supervisor relays frames both ways and writes the ones only it can know: the job
numbers, the child's death, syscalls the filter refused, whether anything was left
running.

One JSON object per line, UTF-8 (a lone surrogate the code printed travels as the bytes
"surrogatepass" gives; the host replaces it):

  host -> supervisor -> runner: a job (`job_frame`): {"seq": N, "code": ..., "inputs":
                              {...}, "stdin": "...", "limits": {"max_recursion_depth": N,
                              "output_bytes": N[, "max_call_bytes": N]}, "keep": bool
                              [, "tools": {name: is_async, ...}, "seed": N]
                              [, "denied_imports": [name, ...]]} ("seq" numbers a
                              container's jobs from 1; "tools", "seed" and "max_call_bytes"
                              only for a tool run; "denied_imports", the policy's, refused
                              at import time); during a tool call, its answer
                              (`reply_frame`, `error_reply_frame`).
  runner -> supervisor -> host: `ready_frame` once, after seccomp is on (or `fatal_frame`
                              when either cannot set itself up, then exit status
                              FATAL_STATUS); then per job any number of `output_frame`s
                              and `call_frame`s (seq counts the job's calls from 1),
                              `where_frame`s while the job runs long (the line it is at,
                              when it changes, so a run stopped at its time limit names
                              its line), one `memory_frame` when its peak memory passes
                              half the cap (a container killed next, with no other word,
                              was killed at the cap: gVisor's engine can lose the OOM
                              flag), and
                              one result frame (RESULT_FIELDS, checked on the host by
                              `checked_result_frame`) or, when the runner died, one
                              `exit_frame`. Every frame of a job carries its number (JOB);
                              the supervisor drops what the runner writes for another job
                              or between jobs, and the host takes no frame for another job.
  supervisor -> host:         `broken_frame` when the runner wrote what is no frame;
                              `exit_frame` with "idle" when the runner ended between jobs.
With "keep" the runner waits for another job in the same interpreter (a session).
A job without "seq" (a host from before the supervisor) gets frames without JOB, and the
runner's death as the container's exit status.

The code runs in the runner's process and can write to the runner's pipe, so nothing
the runner writes is trusted beyond its own job: a line that is not a frame, or a frame
the runner does not write, is the code's doing. The caps below keep every frame the
runner writes under the line cap (`line_cap`), so that a longer line can only be the
code's own bytes."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

# -- frames -------------------------------------------------------------------------

# What tracebacks call the code's own file, in both backends (a request may rename it).
CODE_FILENAME = "<code>"

TYPE = "t"  # every frame's type field; the job has none
JOB = "j"  # the number of the job a frame belongs to (the job's "seq")
READY = "ready"
OUTPUT = "o"
CALL = "call"
REPLY = "reply"
RESULT = "result"
FATAL = "fatal"
EXIT = "exit"  # the runner died: the supervisor says how
WHERE = "where"  # the line of the code the runner's main thread is at
MEMORY = "mem"  # the runner's peak memory passed half its cap
BROKEN = "broken"  # the runner wrote what is no frame: the supervisor says what

# The runner's exit status when it cannot set itself up or read its job, or a tool call
# gets no reply, or one it did not expect.
FATAL_STATUS = 70

# -- caps ---------------------------------------------------------------------------

MiB = 1024 * 1024
# The host's cap on one line while no job runs (the ready frame).
IDLE_LINE_BYTES = MiB
# The most text one output frame carries.
OUTPUT_CHUNK_CHARS = 16 * 1024
# What the runner clips in a result frame: an exception's message, its traceback (the
# innermost frames), a source line, and names and attempts the code chooses (an
# exception class's name, a path it tried to write).
MAX_MESSAGE_CHARS = 2000
MAX_FRAMES = 50
MAX_SOURCE_CHARS = 500
MAX_NAME_CHARS = 500


def line_cap(output_bytes: int) -> int:
    """The host's cap on one line during a job whose output cap is `output_bytes`: what the
    host may hold of one frame. A result frame carries the value (JSON text of at most
    output_bytes) as a JSON string, each byte at most two (a quote or backslash escaped;
    JSON text has no raw control character to grow to six), and clipped error fields
    under 1 MiB; an output frame carries OUTPUT_CHUNK_CHARS; a tool run's call frames are
    held to it too (its job's max_call_bytes). It was 16 x output_bytes: four runs at a
    4 MiB cap held 260-390 MiB of host memory in one line each."""
    return 2 * output_bytes + MiB


# -- writing frames -----------------------------------------------------------------


def encode_frame(obj: Mapping[str, Any], *, strict: bool = False) -> bytes:
    """A frame as one line of UTF-8. `strict`: only JSON values (TypeError or ValueError
    for anything else, as for a tool's arguments)."""
    text = json.dumps(
        obj,
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=not strict,
        default=_not_json if strict else None,
    )
    return (text + "\n").encode("utf-8", "surrogatepass")


def _not_json(value: Any) -> Any:
    raise TypeError(f"a {type(value).__name__} is not a JSON value")


def job_frame(
    *,
    seq: int,
    code: str,
    inputs: Mapping[str, Any],
    stdin: str,
    keep: bool,
    max_recursion_depth: int,
    output_bytes: int,
    memory_bytes: int = 0,
    tools: Mapping[str, bool] | None = None,
    seed: int | None = None,
    denied_imports: Collection[str] = (),
) -> dict[str, Any]:
    """A job; with `tools` (name -> is_async) a tool run, whose call frames must fit the
    host's line cap; `denied_imports`: modules the runner refuses to load for the code."""
    limits: dict[str, int] = {
        "max_recursion_depth": max_recursion_depth,
        "output_bytes": output_bytes,
    }
    if memory_bytes:
        limits["memory_bytes"] = memory_bytes
    job: dict[str, Any] = {
        "seq": seq,
        "code": code,
        "inputs": dict(inputs),
        "stdin": stdin,
        "limits": limits,
        "keep": keep,
    }
    if tools is not None:
        job["tools"] = dict(tools)
        job["seed"] = seed
        limits["max_call_bytes"] = line_cap(output_bytes)
    if denied_imports:
        job["denied_imports"] = sorted(denied_imports)
    return job


def ready_frame(pid: int) -> dict[str, Any]:
    return {TYPE: READY, "pid": pid}


def output_frame(stream: str, text: str) -> dict[str, Any]:
    """At most OUTPUT_CHUNK_CHARS of `text` the code wrote to "stdout" or "stderr"."""
    return {TYPE: OUTPUT, "s": stream, "d": text}


def where_frame(line: int, function: str, source_line: str) -> dict[str, Any]:
    """Where in the code the job is: `line`, in `function` ("" at the top level)."""
    return {TYPE: WHERE, "line": line, "function_name": function, "source_line": source_line}


def memory_frame(peak_bytes: int) -> dict[str, Any]:
    return {TYPE: MEMORY, "peak": peak_bytes}


def checked_memory(frame: Mapping[str, Any]) -> int:
    """A memory frame's peak bytes; 0 for one the runner does not write."""
    peak = frame.get("peak")
    return peak if type(peak) is int and 0 < peak < 2**62 else 0


def checked_where(frame: Mapping[str, Any]) -> dict[str, Any] | None:
    """A where frame's position as a traceback frame's fields; None for one the runner
    does not write (it can only be the code's, and only misleads its own run: ignored)."""
    line, function, source = frame.get("line"), frame.get("function_name"), frame.get("source_line")
    if type(line) is not int or not 0 < line < 2**31:
        return None
    if not isinstance(function, str) or not isinstance(source, str):
        return None
    if len(function) > MAX_NAME_CHARS or len(source) > MAX_SOURCE_CHARS:
        return None
    return {"line": line, "function_name": function, "source_line": source}


def call_frame(seq: int, name: str, args: list[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {TYPE: CALL, "seq": seq, "name": name, "args": args, "kwargs": kwargs}


def reply_frame(seq: int, value: Any) -> dict[str, Any]:
    return {TYPE: REPLY, "seq": seq, "value": value}


def error_reply_frame(seq: int, *, error_type: str, message: str, kind: str) -> dict[str, Any]:
    """The answer that raises in the code where it called the tool."""
    error = {"type": error_type, "message": message, "kind": kind}
    return {TYPE: REPLY, "seq": seq, "error": error}


def fatal_frame(message: str) -> dict[str, Any]:
    return {TYPE: FATAL, "message": message}


def exit_frame(
    job: int, *, status: int | None, signal: int | None, idle: bool, oom: bool = False
) -> dict[str, Any]:
    """The runner ended: with exit `status`, or killed by `signal`; `idle`: between jobs
    (`job` is the last one it ran, 0 for none), so no job saw it; `oom`: the memory
    cgroup killed a process meanwhile."""
    frame: dict[str, Any] = {TYPE: EXIT, JOB: job, "idle": idle, "oom": oom}
    if signal is not None:
        frame["signal"] = signal
    else:
        frame["status"] = status
    return frame


def broken_frame(job: int, message: str) -> dict[str, Any]:
    return {TYPE: BROKEN, JOB: job, "message": message}


# -- the last expression's value ----------------------------------------------------


def _encodable(value: Any) -> Any:
    """A set or frozenset is a JSON array, sorted where its items order (so both
    backends, whose set iteration orders differ, give one answer); anything else JSON
    cannot hold is refused, and value_to_json shows it by its repr()."""
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:  # items of kinds that do not compare: iteration order
            return list(value)
    raise TypeError(type(value).__name__)


_VALUE_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, default=_encodable)


def value_to_json(value: Any) -> str:
    """JSON for a value the code produced (both backends: a run's last expression, a tool
    call's arguments). Never raises. A set is an array, sorted where its items compare;
    anything else JSON cannot hold exactly (bytes, NaN, objects, structures too deep to
    walk) becomes its repr() string, itself JSON-encoded;
    an int too long for Python's int-to-text limit (4300 digits) is shown as
    `<int of about N digits>`, alone or inside a list, tuple, set or dict. (Too large for
    the output cap is the caller's check: an OUTPUT_LIMIT.)"""
    try:
        return _VALUE_ENCODER.encode(value)
    except Exception:  # TypeError, ValueError (NaN, a huge int), RecursionError, ...
        pass
    return json.dumps(_shown(value), ensure_ascii=False)


def _shown(value: Any) -> str:
    try:
        return repr(value)
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply to show>"
    except ValueError:  # an int past the int-to-text limit, alone or inside a container
        try:
            return _repr_within_digit_limit(value, 0)
        except Exception:
            return f"<{type(value).__name__} too large to show>"
    except Exception as exc:  # a user __repr__ that raises
        return f"<{type(value).__name__}: repr() raised {type(exc).__name__}>"


_MAX_REPR_DEPTH = 100


def _repr_within_digit_limit(value: Any, depth: int) -> str:
    """repr() of `value`, with each int too long to convert shown by its size instead."""
    if type(value) is int:
        try:
            return repr(value)
        except ValueError:
            digits = int(value.bit_length() * 0.30103) + 1  # log10(2): about right
            return f"<int of about {digits} digits>"
    if depth >= _MAX_REPR_DEPTH:
        return "..."
    inner = depth + 1
    if type(value) in (list, tuple, set, frozenset):
        items = ", ".join(_repr_within_digit_limit(item, inner) for item in value)
        if type(value) is list:
            return f"[{items}]"
        if type(value) is tuple:
            return f"({items},)" if len(value) == 1 else f"({items})"
        if not value:
            return f"{type(value).__name__}()"
        return f"{{{items}}}" if type(value) is set else f"frozenset({{{items}}})"
    if type(value) is dict:
        pairs = ", ".join(
            f"{_repr_within_digit_limit(k, inner)}: {_repr_within_digit_limit(v, inner)}"
            for k, v in value.items()
        )
        return f"{{{pairs}}}"
    return repr(value)  # may raise again: the caller names the type instead


# -- reading the result frame -------------------------------------------------------


class ForgedFrame(Exception):
    """A frame the runner never writes: a call frame that breaks the tool protocol (out
    of sequence, an undeclared tool, malformed), a fatal frame once the job runs, or a
    result frame with fields the runner does not write. The code can write one."""


# What the runner's result frame holds (sandbox_runner.py, Runner.run), and its error's.
RESULT_FIELDS = frozenset(
    {TYPE, JOB, "ok", "exit_code", "value", "value_bytes", "error", "blocked", "usage"}
    # The supervisor's: syscalls its filter refused (seen from outside the code's
    # process), and whether the code left a thread or process running.
    | {"syscalls", "left_running"}
)
USAGE_FIELDS = frozenset({"cpu_ms", "peak_memory_bytes"})
ERROR_FIELDS = frozenset(
    {"type", "module", "message", "frames", "os_error", "syntax", "tool_seq", "denied_import"}
)
TRACE_INT_FIELDS = frozenset({"line", "column", "end_line", "end_column"})
TRACE_TEXT_FIELDS = frozenset({"function_name", "source_line"})
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1
# A JSON escape of a surrogate (not an escaped backslash before "u"). The runner writes
# the value with ensure_ascii=False, so never one; a lone one would reach the client as
# a surrogate from its json.loads.
_SURROGATE_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u[dD][89a-fA-F]")


def checked_result_frame(frame: dict[str, Any]) -> dict[str, Any]:
    """`frame` if it is a result frame the runner could have written; raises ForgedFrame
    for any other (the code can write one to the channel). The one place the host checks
    the fields it later turns into a result: int() and the wire's int32 and int64 fields
    must not fail on them."""
    problem = _result_problem(frame)
    if problem:
        raise ForgedFrame(f"a result frame the runner does not write ({problem})")
    return frame


def _is_int(value: Any, top: int, bottom: int = 0) -> bool:
    return type(value) is int and bottom <= value <= top


def _result_problem(frame: dict[str, Any]) -> str:
    if set(frame) - RESULT_FIELDS:
        return "unknown fields"
    ok = frame.get("ok")
    if type(ok) is not bool or not _is_int(frame.get("exit_code"), 255):
        return "ok or exit_code"
    usage = frame.get("usage", {})
    if not isinstance(usage, dict) or set(usage) - USAGE_FIELDS:
        return "usage"
    if not all(_is_int(v, _INT64) for v in usage.values()):
        return "usage"
    for name in ("blocked", "syscalls"):
        listed = frame.get(name, [])
        if not isinstance(listed, list) or not all(isinstance(b, str) for b in listed):
            return name
    if type(frame.get("left_running", False)) is not bool:
        return "left_running"
    if "value_bytes" in frame and not (ok and _is_int(frame["value_bytes"], _INT64)):
        return "value_bytes"
    if "value" in frame:
        value = frame["value"]
        if not ok or not isinstance(value, str) or _SURROGATE_ESCAPE.search(value):
            return "value"
    if ok:
        return "error" if "error" in frame else ""
    error = frame.get("error")
    if not isinstance(error, dict) or set(error) - ERROR_FIELDS:
        return "error"
    texts = [error.get(k, "") for k in ("type", "module", "message", "denied_import")]
    flags = [error.get(k, False) for k in ("os_error", "syntax")]
    if not all(isinstance(t, str) for t in texts) or not all(type(f) is bool for f in flags):
        return "error"
    if "tool_seq" in error and not _is_int(error["tool_seq"], _INT32):
        return "error"
    frames = error.get("frames", [])
    if not isinstance(frames, list) or not all(_trace_frame_ok(f) for f in frames):
        return "error frames"
    return ""


def _trace_frame_ok(frame: Any) -> bool:
    if not isinstance(frame, dict) or set(frame) - TRACE_INT_FIELDS - TRACE_TEXT_FIELDS:
        return False
    return all(
        _is_int(v, _INT32, -_INT32 - 1) if k in TRACE_INT_FIELDS else isinstance(v, str)
        for k, v in frame.items()
    )
