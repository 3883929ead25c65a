"""Failure pieces every backend's classifier shares, so a kind reads the same whichever
backend produced it."""

from __future__ import annotations

import errno
import re

from sandbox.core.limits import EffectiveLimits
from sandbox_client.protocol.models import KIND_DEFAULTS, Failure, FailureKind, Frame

_MAX_CHARS = 500


def one_line(text: str, frames: tuple[Frame, ...] = ()) -> str:
    """The first line of `text`, then where it happened: `(line N: source)`."""
    text = first_line(text)
    if frames:
        where = frames[-1]
        source = where.source_line.strip()
        text += f" (line {where.line}" + (f": {source})" if source else ")")
    return text


def first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _MAX_CHARS else line[: _MAX_CHARS - 3] + "..."


def output_limit_failure(limits: EffectiveLimits) -> Failure:
    return Failure.of(
        FailureKind.OUTPUT_LIMIT,
        f"output exceeded the {limits.output_bytes}-byte cap; it was truncated there",
        details={"limit": "output_bytes", "limit_value": str(limits.output_bytes)},
    )


def result_too_large_failure(limits: EffectiveLimits) -> Failure:
    return Failure.of(
        FailureKind.OUTPUT_LIMIT,
        f"the result exceeded the {limits.output_bytes}-byte output cap",
        details={"limit": "output_bytes", "part": "result"},
    )


def runtime_error_failure(
    limits: EffectiveLimits,
    type_name: str,
    message: str,
    frames: tuple[Frame, ...],
    details: dict[str, str] | None = None,
) -> Failure:
    """RUNTIME_ERROR for an exception the code left uncaught (nothing more specific
    explains it). One a cap explains (recursion depth, processes, disk) names that cap,
    in the message and in `details`, as memory and time do."""
    said = f"{type_name}: {message}" if message else type_name
    cap = _cap_hit(type_name, message, limits)
    if cap is not None:
        name, value, why = cap
        details = {**(details or {}), "limit": name, "limit_value": str(value)}
        said = f"{said} ({why})"
    return Failure.of(
        FailureKind.RUNTIME_ERROR,
        one_line(said, frames),
        exception_type=type_name,
        frames=frames,
        details=details or {},
    )


_ERRNO = re.compile(r"\[Errno (\d+)\]")


def _cap_hit(type_name: str, message: str, limits: EffectiveLimits) -> tuple[str, int, str] | None:
    """The limit behind an error, when its type and errno say which: a fork or thread
    refused (EAGAIN) under the pids cap, a write refused on a full disk (ENOSPC, or
    EFBIG from a capped tmpfs)."""
    if type_name == "RecursionError":
        depth = limits.max_recursion_depth
        return "max_recursion_depth", depth, f"the recursion depth limit is {depth}"
    found = _ERRNO.match(message)
    code = int(found.group(1)) if found else None
    if limits.pids and (
        (type_name == "BlockingIOError" and code == errno.EAGAIN)
        or (type_name == "RuntimeError" and message.startswith("can't start new thread"))
    ):
        return "pids", limits.pids, f"the limit of {limits.pids} processes and threads was reached"
    if limits.disk_bytes and type_name == "OSError" and code in (errno.ENOSPC, errno.EFBIG):
        disk = limits.disk_bytes
        return "disk_bytes", disk, f"the disk limit of {disk} bytes was reached"
    return None


def tool_failure(
    *,
    tool: str,
    seq: int,
    exception_type: str,
    message: str,
    tool_kind: str,
    frames: tuple[Frame, ...],
) -> Failure:
    """TOOL_ERROR for a tool's error answer the code left uncaught. "Per the tool's kind":
    a tool that failed for a retryable reason makes the whole run retryable, and so on."""
    details = {"tool": tool, "call_id": str(seq)}
    fields: dict[str, object] = {}
    if tool_kind in FailureKind.__members__:
        retryable, action = KIND_DEFAULTS[FailureKind(tool_kind)]
        fields = {"retryable": retryable, "suggested_action": action}
        details["tool_kind"] = tool_kind
    text = exception_type + (f": {message}" if message else "")
    return Failure.of(
        FailureKind.TOOL_ERROR,
        one_line(f"tool {tool!r} raised {text}", frames),
        exception_type=exception_type,
        frames=frames,
        details=details,
        **fields,
    )
