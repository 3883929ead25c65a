"""Shadow checking: a sample of AUTO's successful Monty runs is run again in a container,
off the request path, and the two answers (completion, stdout, value) compared. A
mismatch is a divergence the table (backends/monty/divergence.py) does not know yet: it
is counted, logged with the code's digest, and kept in the state directory, where
`sandbox fidelity report` dumps it.

Bounded so that it never costs a request anything: the executor only offers (a put that
never waits, onto a small queue; dropped when full), one sample at a time is checked, and
only while the container backend has a slot free with nobody waiting (otherwise the
sample is dropped). Plain runs only: a tool run would call its tools again, and a
session's run depends on the runs before it.

Off unless a policy's `shadow_sample_rate` is above 0."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import structlog

from sandbox.backends.base import ExecutionBackend, RunSpec
from sandbox.tasks import cancel_and_wait
from sandbox_client.protocol.models import ExecutionResult, FailureKind

log = structlog.get_logger("sandbox.shadow")

QUEUE_SIZE = 16
MISMATCHES_FILE = "fidelity-mismatches.jsonl"
# Kept in the file at most; older ones are dropped when it is rewritten.
MAX_KEPT = 1000

Outcome = Literal["matched", "mismatched", "inconclusive", "dropped"]
# A container answer that says nothing about CPython's: the container could not run it.
_INCONCLUSIVE = frozenset(
    {
        FailureKind.INFRA_UNAVAILABLE,
        FailureKind.SANDBOX_CRASH,
        FailureKind.THROTTLED,
        FailureKind.CANCELLED,
        FailureKind.TIMEOUT,
        FailureKind.MEMORY_LIMIT,
        FailureKind.OUTPUT_LIMIT,
        FailureKind.UNSUPPORTED,
        FailureKind.POLICY_VIOLATION,
    }
)


@dataclass(frozen=True, kw_only=True)
class Sample:
    spec: RunSpec
    monty: ExecutionResult
    execution_id: str
    policy: str
    keep_code: bool  # the policy's audit_code is "full"


@dataclass(frozen=True, kw_only=True)
class Mismatch:
    """What `sandbox fidelity report` shows of one divergence found."""

    digest: str  # sha256 of the code
    execution_id: str
    policy: str
    at: float  # unix time
    code: str  # "" when the policy keeps only digests (audit_code = "digest")
    monty_ok: bool
    monty_stdout: str
    monty_result: str | None
    cpython_ok: bool
    cpython_stdout: str
    cpython_result: str | None
    cpython_error: str


def code_digest(code: str) -> str:
    return "sha256:" + hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()


class ShadowChecker:
    """Compares sampled Monty answers with a container's. `count` is told each outcome
    (the server's metric); mismatches go to `state_dir`/MISMATCHES_FILE; a sample is
    checked only while `free_slot()` says the container backend has room."""

    def __init__(
        self,
        container: ExecutionBackend,
        *,
        state_dir: Path | None,
        count: Callable[[Outcome], None] = lambda _outcome: None,
        free_slot: Callable[[], bool] = lambda: True,
        queue_size: int = QUEUE_SIZE,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.container = container
        self.path = state_dir / MISMATCHES_FILE if state_dir is not None else None
        self.count = count
        self.free_slot = free_slot
        self.draw = draw
        self.queue: asyncio.Queue[Sample] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()  # set whenever the queue is empty and nothing is checked
        self.idle.set()

    def offer(self, sample: Sample, rate: float) -> bool:
        """Queues `sample` with probability `rate`; never waits. Whether it was queued."""
        if rate <= 0 or self.draw() >= rate:
            return False
        try:
            self.queue.put_nowait(sample)
        except asyncio.QueueFull:
            self.count("dropped")
            return False
        self.idle.clear()
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _loop(self) -> None:
        while True:
            sample = await self.queue.get()
            try:
                await self.check(sample)
            except Exception as exc:  # a bug here must not end the checking
                log.warning("shadow check failed", error=repr(exc))
                self.count("inconclusive")
            finally:
                if self.queue.empty():
                    self.idle.set()

    async def check(self, sample: Sample) -> Mismatch | None:
        """Runs `sample` in the container and compares; the mismatch, if any."""
        if not self.free_slot():
            self.count("dropped")  # requests first
            return None
        native = await self.container.run(sample.spec)
        if native.failure is not None and native.failure.kind in _INCONCLUSIVE:
            self.count("inconclusive")
            return None
        monty = sample.monty
        if (native.ok, native.stdout, native.result_json) == (
            monty.ok,
            monty.stdout,
            monty.result_json,
        ):
            self.count("matched")
            return None
        mismatch = Mismatch(
            digest=code_digest(sample.spec.code),
            execution_id=sample.execution_id,
            policy=sample.policy,
            at=time.time(),
            code=sample.spec.code if sample.keep_code else "",
            monty_ok=monty.ok,
            monty_stdout=monty.stdout,
            monty_result=monty.result_json,
            cpython_ok=native.ok,
            cpython_stdout=native.stdout,
            cpython_result=native.result_json,
            cpython_error=native.failure.message if native.failure else "",
        )
        self.count("mismatched")
        log.warning(
            "Monty and CPython answered differently",
            digest=mismatch.digest,
            execution_id=mismatch.execution_id,
            policy=mismatch.policy,
        )
        if self.path is not None:
            await asyncio.to_thread(_append, self.path, mismatch)
        return mismatch


def _append(path: Path, mismatch: Mismatch) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(asdict(mismatch), ensure_ascii=False) + "\n")
    if path.stat().st_size > MAX_KEPT * 4096:  # rarely: keep the latest MAX_KEPT
        kept = list(read_mismatches(path))[-MAX_KEPT:]
        path.write_text("".join(json.dumps(asdict(m)) + "\n" for m in kept), encoding="utf-8")


def read_mismatches(path: Path) -> Iterator[Mismatch]:
    """The mismatches kept in `path`, oldest first (lines that do not parse are skipped:
    a server may be appending while this reads)."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                yield Mismatch(**json.loads(line))
            except (ValueError, TypeError):
                continue
