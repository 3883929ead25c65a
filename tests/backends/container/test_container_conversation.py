"""The host's side of a job, against a scripted channel: a frame numbered for another
job is never taken as this job's (the supervisor numbers what it relays; this is the
host's own check), and a runner that ended before the job is not this job's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox.backends.container import conversation
from sandbox.backends.container.conversation import Container
from sandbox.backends.container.engine import ExitState, Shape
from sandbox.backends.container.outcome import ContainerSignals, map_container_outcome
from sandbox.backends.container.protocol import exit_frame, job_frame
from sandbox.core.output import OutputCapture
from sandbox_client import FailureKind
from tests.backends.container.conftest import LIMITS

SHAPE = Shape(image="x", runtime="runc", memory_bytes=1, cpu_millis=1, pids=1, disk_bytes=1)


@dataclass
class ScriptedChannel:
    frames: list[dict[str, Any]]
    sent: list[dict[str, Any]] = field(default_factory=list)
    max_line_bytes: int = 0
    closed: bool = False

    def send(self, obj: dict[str, Any]) -> None:
        self.sent.append(obj)

    def read_frame(self, deadline: float) -> dict[str, Any]:
        return self.frames.pop(0)

    def close(self) -> None:
        self.closed = True


class Engine:
    killed = False

    def kill(self, container_id: str) -> None:
        self.killed = True

    def wait_exit(self, container_id: str, timeout_s: int) -> ExitState:
        return ExitState(oom_killed=False, exit_code=70)


def _run(frames: list[dict[str, Any]], *, earlier_jobs: int) -> tuple[ContainerSignals, str]:
    channel: Any = ScriptedChannel(frames)
    container = Container(id="c", shape=SHAPE, channel=channel, jobs=earlier_jobs)
    seq = earlier_jobs + 1
    job = job_frame(
        seq=seq, code="1", inputs={}, stdin="", keep=True, max_recursion_depth=10, output_bytes=99
    )
    capture = OutputCapture(1000)
    signals = ContainerSignals(limits=LIMITS, seq=seq)
    engine: Any = Engine()
    conversation.execute(engine, container, job, capture, signals)
    assert channel.sent == [job] and container.jobs == seq
    return signals, capture.text("stdout")


def _result(job: int, value: str) -> dict[str, Any]:
    return {"t": "result", "j": job, "ok": True, "exit_code": 0, "value": value}


def test_frames_of_this_job_are_taken() -> None:
    signals, out = _run(
        [{"t": "o", "j": 2, "s": "stdout", "d": "hi\n"}, _result(2, "2")], earlier_jobs=1
    )
    assert out == "hi\n" and signals.frame is not None and signals.frame["value"] == "2"


def test_a_frame_for_another_job_is_never_this_ones() -> None:
    for stale in (
        _result(1, '"the run before"'),
        {"t": "o", "j": 1, "s": "stdout", "d": "x"},
        _result(3, "3"),
    ):
        signals, out = _run([stale, _result(2, "2")], earlier_jobs=1)
        assert signals.frame is None and out == ""
        failure = map_container_outcome(None, signals)
        assert failure is not None and failure.kind is FailureKind.POLICY_VIOLATION
        assert "for job" in failure.message


def test_a_runner_that_ended_before_the_job_is_not_its_outcome() -> None:
    idle = exit_frame(1, status=None, signal=9, idle=True)
    signals, _ = _run([idle], earlier_jobs=1)
    failure = map_container_outcome(None, signals)
    assert failure is not None and failure.kind is FailureKind.CORRUPT_STATE
    assert "between executions" in failure.message and "SIGKILL" in failure.message
    # In a container's first job: the sandbox, not the code, and worth a retry.
    signals, _ = _run([exit_frame(0, status=None, signal=9, idle=True)], earlier_jobs=0)
    failure = map_container_outcome(None, signals)
    assert failure is not None and failure.kind is FailureKind.SANDBOX_CRASH and failure.retryable
