"""Runs Monty code that calls host tools: `feed_start`, then one snapshot per tool call,
answered through a ToolHost and checkpointed (`dump()`) after each answer.

Knows nothing of gRPC or the journal: the host answers calls (from the client, or from
its records when a run resumes) and keeps checkpoints; this module drives the
interpreter and classifies the outcome with map_monty_outcome, like MontyBackend."""

from __future__ import annotations

import asyncio
import datetime
import functools
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic_monty as pm

from sandbox.backends.base import RunSpec
from sandbox.backends.monty.outcome import HOST_GRACE_S, RunSignals, map_monty_outcome, monty_result
from sandbox.backends.monty.sealed import SealedSession
from sandbox.backends.tools import InjectedToolError, ToolCallRequest, ToolHost, ToolReply
from sandbox.core.limits import EffectiveLimits
from sandbox.core.output import OutputCapture, OutputLimitExceeded, OutputSink, StreamName
from sandbox_client import ExecutionResult

_CLOCKS = frozenset({"time.time", "datetime.now", "date.today"})
_SLEEPS = frozenset({"time.sleep", "system.sleep", "asyncio.sleep", "system.async_sleep"})

# Exception names Monty can raise from a tool answer (pydantic_monty.ExcType); others
# arrive as RuntimeError with the name in the message.
_EXC_TYPES = frozenset(pm.ExcType.__args__)  # type: ignore[attr-defined]


class _Output:
    """The capture for this leg of the run, after whatever earlier legs printed."""

    def __init__(
        self, limits: EffectiveLimits, prior: Mapping[str, Any], forward: OutputSink | None
    ):
        self.prior: dict[StreamName, str] = {
            "stdout": str(prior.get("stdout", "")),
            "stderr": str(prior.get("stderr", "")),
        }
        self.prior_truncated = bool(prior.get("truncated", False))
        used = sum(len(t.encode("utf-8", "surrogatepass")) for t in self.prior.values())
        self.capture = OutputCapture(max(0, limits.output_bytes - used), forward)

    def text(self, stream: StreamName) -> str:
        return self.prior[stream] + self.capture.text(stream)

    def state(self, clock_reads: int) -> dict[str, Any]:
        """What a checkpoint keeps beside the dump."""
        return {
            "stdout": self.text("stdout"),
            "stderr": self.text("stderr"),
            "truncated": self.prior_truncated or self.capture.exceeded,
            "clock_reads": clock_reads,
        }


def tool_os_policy(seed: int) -> pm.OSPolicy:
    """A tool run's interpreter: clock reads come to the host, which journals them (time
    passes as usual, and a resumed run sees the values the interrupted one saw);
    `random` is seeded with the run's pinned seed; sleeps come to the host too."""
    return {
        "datetime": "call_host",
        "random_start": {"seed": seed},
        "sleep_system_max": float("inf"),
    }


class _SleepBudgetSpent(Exception):
    """The code asked for more sleep than its budget: the host stops the run (a TIMEOUT),
    as Monty's own sleep limit stops a plain run; the code cannot catch it."""


async def drive_tools(checked_out: SealedSession, spec: RunSpec, host: ToolHost) -> ExecutionResult:
    """Runs (or resumes) `spec` to completion in `checked_out` (checked out with
    tool_os_policy). Never raises for the code's outcome; CheckpointMismatch and
    cancellation propagate."""
    session = checked_out.session
    resume = spec.resume
    output = _Output(spec.limits, resume.output if resume else {}, spec.on_output)
    signals = RunSignals(limits=spec.limits, sealed=checked_out.sealed, code=spec.code)
    stdin = iter(spec.stdin.splitlines())
    seq = resume.seq if resume else 0
    pending: dict[int, _Pending] = {}  # by Monty's call_id
    running_s = 0.0
    slept_s = 0.0
    clock_reads = int(resume.output.get("clock_reads", 0)) if resume else 0
    error: pm.MontyError | None = None
    value: Any = None

    async def step(turn: Awaitable[pm.AsyncSnapshot]) -> pm.AsyncSnapshot:
        nonlocal running_s
        started = time.monotonic()
        try:
            async with asyncio.timeout(spec.limits.wall_time_s + HOST_GRACE_S):
                return await turn
        finally:
            running_s += time.monotonic() - started

    try:
        if resume is not None:
            snap = await step(session.load_snapshot(resume.blob, print_callback=output.capture))
        else:
            snap = await step(
                session.feed_start(
                    spec.code, inputs=dict(spec.inputs) or None, print_callback=output.capture
                )
            )
        while not isinstance(snap, pm.MontyComplete):
            if isinstance(snap, pm.AsyncNameLookupSnapshot):
                snap = await step(snap.resume())  # undefined: NameError, as in CPython
            elif isinstance(snap, pm.AsyncFutureSnapshot):
                settled = await _settle(pending, snap.pending_call_ids, signals)
                snap = await step(snap.resume(settled))
                if not pending and isinstance(snap, pm.AsyncFunctionSnapshot):
                    await host.checkpoint(seq, snap.dump(), output.state(clock_reads))
            elif snap.is_os_function and str(snap.function_name) in _CLOCKS:
                clock_reads += 1
                name, args = str(snap.function_name), snap.args
                raw = host.clock(clock_reads, name, functools.partial(_read_clock, name, args))
                snap = await step(snap.resume({"return_value": _clock_value(name, raw)}))
            elif snap.is_os_function and str(snap.function_name) in _SLEEPS:
                # feed_start hands sleeps to the host. The clock is pinned, so only this
                # real wait makes time pass; it counts against the wall-time budget.
                seconds = _seconds(snap.args[0]) if snap.args else 0.0
                slept_s += seconds
                if slept_s > spec.limits.wall_time_s:
                    raise _SleepBudgetSpent
                await asyncio.sleep(seconds)
                snap = await step(snap.resume({"return_value": None}))
            elif snap.is_os_function:
                # No mounts: every OS call is denied, and recorded so the denial is
                # classified POLICY_VIOLATION.
                signals.denied.add(str(snap.function_name), snap.args)
                snap = await step(snap.resume_not_handled())
            elif snap.function_name == "input" and "input" not in spec.tools:
                line = next(stdin, None)
                answer: pm.ExternalResult = (
                    {"return_value": line}
                    if line is not None
                    else {"exc_type": "EOFError", "message": "EOF when reading a line"}  # type: ignore[typeddict-item]
                )
                snap = await step(snap.resume(answer))
            elif snap.function_name not in spec.tools:
                snap = await step(
                    snap.resume(
                        {
                            "exc_type": "NameError",
                            "message": f"name '{snap.function_name}' is not defined",
                        }
                    )
                )
            else:
                seq += 1
                name = str(snap.function_name)
                reply = host.ask(
                    ToolCallRequest(seq=seq, name=name, args=snap.args, kwargs=snap.kwargs)
                )
                if spec.tools[name]:
                    pending[snap.call_id] = _Pending(seq, name, asyncio.ensure_future(reply))
                    snap = await step(snap.resume({"future": ...}))
                else:
                    result = await reply
                    snap = await step(snap.resume(_external(result, name, seq, signals)))
                    if not pending and isinstance(snap, pm.AsyncFunctionSnapshot):
                        await host.checkpoint(seq, snap.dump(), output.state(clock_reads))
        value = snap.output
    except pm.MontyError as exc:
        error = exc
    except TimeoutError:
        signals.host_timed_out = True
    except _SleepBudgetSpent:
        signals.sleep_exceeded = True
    except OutputLimitExceeded:
        pass  # the capture marked the output truncated; classified below
    finally:
        for call in pending.values():
            call.answer.cancel()
    signals.elapsed_s = running_s
    signals.output_exceeded = output.capture.exceeded or output.prior_truncated
    return monty_result(
        value,
        map_monty_outcome(error, signals),
        limits=spec.limits,
        elapsed_s=running_s,
        stdout=output.text("stdout"),
        stdout_truncated=output.capture.truncated["stdout"],
        stderr=output.text("stderr"),
        stderr_truncated=output.capture.truncated["stderr"],
    )


@dataclass(frozen=True)
class _Pending:
    seq: int
    name: str
    answer: asyncio.Future[ToolReply]


async def _settle(
    pending: dict[int, _Pending], call_ids: list[int], signals: RunSignals
) -> dict[int, pm.ExternalSettledResult]:
    """Waits for at least one of the awaited async calls and returns every answer in."""
    await asyncio.wait(
        [pending[call_id].answer for call_id in call_ids], return_when=asyncio.FIRST_COMPLETED
    )
    settled: dict[int, pm.ExternalSettledResult] = {}
    for call_id in call_ids:
        call = pending[call_id]
        if call.answer.done():
            del pending[call_id]
            settled[call_id] = _external(call.answer.result(), call.name, call.seq, signals)
    return settled


def _external(
    reply: ToolReply, name: str, seq: int, signals: RunSignals
) -> pm.ExternalSettledResult:
    if not reply.error_type:
        return {"return_value": reply.value}
    exc_type = reply.error_type if reply.error_type in _EXC_TYPES else "RuntimeError"
    message = reply.error_message
    if exc_type != reply.error_type:
        message = f"{reply.error_type}: {message}"
    signals.tool_errors.append(
        InjectedToolError(
            seq=seq, tool=name, exception_type=exc_type, message=message, kind=reply.error_kind
        )
    )
    return {"exc_type": exc_type, "message": message}  # type: ignore[typeddict-item]


def _seconds(requested: Any) -> float:
    """The seconds a sleep asked for, as the host waits them: never negative, and a
    number too large for a float is forever (Monty has checked it is a number)."""
    try:
        seconds = float(requested)
    except OverflowError:
        return float("inf")
    except (TypeError, ValueError):
        return 0.0
    return seconds if seconds > 0 else 0.0  # NaN and negatives: no wait


def _read_clock(name: str, args: tuple[Any, ...]) -> Any:
    """The host clock as Monty asked for it, in JSON. Naive readings are UTC, the
    sandbox's zone."""
    now = datetime.datetime.now(datetime.UTC)
    if name == "time.time":  # time.monotonic and friends too (args[0] names which)
        return now.timestamp()
    if name == "date.today":
        return now.date().isoformat()
    tz = args[0] if args else None
    return (now.astimezone(tz) if tz is not None else now.replace(tzinfo=None)).isoformat()


def _clock_value(name: str, raw: Any) -> Any:
    if name == "time.time":
        return float(raw)
    if name == "date.today":
        return datetime.date.fromisoformat(raw)
    return datetime.datetime.fromisoformat(raw)
