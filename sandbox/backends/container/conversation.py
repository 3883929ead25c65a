"""The host's side of the conversation with one container (frames: protocol.py; the
supervisor relays the runner's): start a container and wait for its ready frame; send it
a job, numbered, and read that job's frames until its result or the runner's exit,
relaying tool calls through a ToolBridge, holding the output cap and the wall clock,
taking no frame numbered for another job, and stopping the container (its channel
closed first) when a cap is hit or the code breaks the protocol. Blocking, worker
threads only; the engine calls are engine.py's, the bytes on the socket channel.py's."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sandbox.backends.container.channel import (
    ChannelClosed,
    ChannelTimeout,
    ProtocolError,
    RunnerChannel,
    StreamError,
)
from sandbox.backends.container.engine import Engine, Shape
from sandbox.backends.container.outcome import ContainerSignals, RunnerStartError
from sandbox.backends.container.protocol import (
    BROKEN,
    CALL,
    EXIT,
    FATAL,
    IDLE_LINE_BYTES,
    JOB,
    MEMORY,
    OUTPUT,
    OUTPUT_CHUNK_CHARS,
    READY,
    RESULT,
    TYPE,
    WHERE,
    ForgedFrame,
    checked_memory,
    checked_result_frame,
    checked_where,
    line_cap,
)
from sandbox.backends.container.tools import RelayStopped, ToolBridge
from sandbox.core.output import OutputCapture, OutputLimitExceeded, StreamName

READY_TIMEOUT_S = 30.0
# After a run ends without a frame: how long to wait for the container's exit status.
EXIT_WAIT_S = 5


@dataclass(eq=False)
class Container:
    """A started container whose runner waits for its job on `channel`."""

    id: str
    shape: Shape
    channel: RunnerChannel
    jobs: int = 0  # the number of the last job sent (job_frame's seq)

    def looks_alive(self) -> bool:
        return self.channel.looks_alive()


def launch(engine: Engine, shape: Shape) -> Container:
    """Creates, attaches and starts a container, and waits for its runner's ready frame.
    Attached before it starts: nothing the runner writes is lost. Removed again when it
    does not get that far (RunnerStartError when the runner said why, or said nothing)."""
    container_id = engine.create(shape)
    channel: RunnerChannel | None = None
    try:
        channel = RunnerChannel(engine.attach(container_id), max_line_bytes=IDLE_LINE_BYTES)
        engine.start(container_id)
        try:
            frame = channel.read_frame(time.monotonic() + READY_TIMEOUT_S)
        except (ChannelClosed, ChannelTimeout, ProtocolError, StreamError) as exc:
            why = channel.diagnostics.decode("utf-8", "replace").strip()[-500:]
            raise RunnerStartError(
                f"the runner did not start ({type(exc).__name__}) {why}".strip()
            ) from exc
        if frame[TYPE] != READY:
            raise RunnerStartError(str(frame.get("message") or frame)[-500:])
        return Container(id=container_id, shape=shape, channel=channel)
    except BaseException:
        if channel is not None:
            channel.close()
        engine.remove(container_id)
        raise


def execute(
    engine: Engine,
    container: Container,
    job: dict[str, Any],
    capture: OutputCapture,
    signals: ContainerSignals,
    tools: ToolBridge | None = None,
) -> None:
    """Sends `job` (protocol.job_frame) and collects frames until its result, the deadline
    or the runner's end; fills `signals`. With `tools`, answers the runner's call frames
    through it; the time a call waits for its answer (the runner blocked, reading) does
    not count against the wall-time budget. Kills the container when a cap is hit, the
    code writes to the channel (garbage, a forged call, fatal or result frame), the
    engine's stream breaks or the run is stopped. Errors talking to the engine propagate."""
    channel = container.channel
    channel.max_line_bytes = line_cap(signals.limits.output_bytes)
    seq = container.jobs = int(job["seq"])
    started = time.monotonic()
    deadline = started + signals.limits.wall_time_s
    try:
        try:
            channel.send(job)
        except ConnectionError:
            # Gone already; what it said before it went is still to be read.
            deadline = min(deadline, time.monotonic() + EXIT_WAIT_S)
        while True:
            frame = channel.read_frame(deadline)
            kind = frame[TYPE]
            if kind == EXIT and frame.get("idle") is True:
                # The runner ended before this job (after an earlier one, or in the pool):
                # nothing of this job ran, and nothing is said of an earlier one.
                signals.runner_exit = frame
                break
            if frame.get(JOB) != seq:
                # The supervisor numbers every frame it relays; one for another job is
                # never taken as this one's.
                raise ForgedFrame(f"a frame for job {frame.get(JOB)!r} during job {seq}")
            if kind == OUTPUT:
                stream: StreamName = "stderr" if frame.get("s") == "stderr" else "stdout"
                text = str(frame.get("d", ""))
                if len(text) > OUTPUT_CHUNK_CHARS:
                    raise ForgedFrame("an output frame longer than the runner writes")
                capture(stream, text)
            elif kind == CALL and tools is not None:
                asked = time.monotonic()
                try:
                    reply = tools.answer(frame)
                finally:
                    waited = time.monotonic() - asked
                    deadline += waited
                    signals.tool_wait_s += waited
                channel.send(reply)
            elif kind == RESULT:
                signals.frame = checked_result_frame(frame)
                value, cap = signals.frame.get("value"), signals.limits.output_bytes
                if value is not None and (len(value) > cap or len(value.encode()) > cap):
                    # The runner sends a value past the output cap as its size only.
                    raise ForgedFrame("a result frame whose value is past the output cap")
                break
            elif kind == WHERE:
                signals.where = checked_where(frame) or signals.where
            elif kind == MEMORY:
                signals.memory_peak = max(signals.memory_peak, checked_memory(frame))
            elif kind == EXIT:
                signals.runner_exit = frame
                signals.oom_killed = frame.get("oom") is True
                break
            elif kind == BROKEN:
                what = str(frame.get("message") or "")[:200]
                if frame.get("forged") is True:
                    raise ForgedFrame(what)
                raise ProtocolError(what)
            elif kind == FATAL:
                # The runner reports its own set-up failures before "ready" (launch()
                # turns those into RunnerStartError); once it runs the job, only the
                # code can make one appear: written to the channel, or caused by
                # reading the host's replies off it. A retry runs the same code.
                said = str(frame.get("message") or "").strip().splitlines() or [""]
                raise ForgedFrame(f"a fatal frame in the middle of the run: {said[0][:200]!r}")
    except OutputLimitExceeded:
        signals.output_exceeded = True
        _stop(engine, container)
    except ChannelTimeout:
        signals.host_timed_out = True
        _stop(engine, container)
    except ProtocolError as exc:
        signals.protocol_error = str(exc)
        _stop(engine, container)
    except StreamError as exc:
        signals.stream_error = str(exc)
        _stop(engine, container)
    except ForgedFrame as exc:
        signals.forged_frame = str(exc)
        _stop(engine, container)
    except RelayStopped:
        signals.relay_stopped = True
        _stop(engine, container)
    except (ChannelClosed, ConnectionError):
        pass  # the container ended; its state says how
    finally:
        signals.elapsed_s = time.monotonic() - started - signals.tool_wait_s
    stopped = signals.host_timed_out or signals.output_exceeded or signals.relay_stopped
    if signals.frame is None and not stopped:
        # The supervisor exits as soon as it has said how the runner ended, with its
        # status; the engine's OOMKilled flag covers a kill the supervisor did not see.
        state = engine.wait_exit(container.id, EXIT_WAIT_S)
        if state is not None:
            signals.oom_killed = signals.oom_killed or state.oom_killed
            if state.exit_code is not None:
                signals.exit_code = state.exit_code


def _stop(engine: Engine, container: Container) -> None:
    """Kills a container mid-run. Its channel is closed first: the engine does not finish
    a kill while it still has the container's output to hand us, and we no longer read it
    (a kill of a container still writing waited for the client's 30 s timeout)."""
    container.channel.close()
    engine.kill(container.id)
