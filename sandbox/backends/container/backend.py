"""The container backend: full CPython in a network-isolated, capped, hardened Docker
container, one container per execution (or per session), handed out by a warm pool.

docker-py blocks, so every engine call runs on this backend's own thread pool; the event
loop only waits."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from sandbox.backends.base import BackendSession, RunSpec
from sandbox.backends.container import conversation
from sandbox.backends.container.conversation import Container
from sandbox.backends.container.engine import (
    INSTANCE_LABEL,
    MODULES_LABEL,
    OWNER,
    OWNER_LABEL,
    SCOPE_LABEL,
    Engine,
    Runtime,
    Shape,
)
from sandbox.backends.container.outcome import (
    INFRA_RETRY_AFTER_MS,
    ContainerSignals,
    map_container_outcome,
)
from sandbox.backends.container.owner import OWNER_PROCESS_LABEL, owner_process, owner_process_gone
from sandbox.backends.container.pool import REFILL_PARALLELISM, WarmPool
from sandbox.backends.container.protocol import job_frame
from sandbox.backends.container.settings import ContainerSettings
from sandbox.backends.container.tools import ToolBridge
from sandbox.backends.outcome_parts import first_line
from sandbox.backends.tools import ToolHost
from sandbox.core.limits import EffectiveLimits
from sandbox.core.output import OutputCapture
from sandbox.errors import RequestError
from sandbox_client import Backend, ExecutionResult, Failure, FailureKind, Usage

log = structlog.get_logger("sandbox.container")
T = TypeVar("T")


class _Busy(Exception):
    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_ms = retry_after_ms


# How many recent slot releases the drain rate is measured over, and the bounds of the
# wait a refusal asks for.
_DRAIN_WINDOW = 32
_MAX_RETRY_AFTER_MS = 30_000


class _Admission:
    """At most `limit` runs at once; at most `queue` more wait, each at most `timeout_s`.
    A refusal is back-pressure: it says how long to wait, from how fast slots have been
    coming free (the time for the queue ahead to drain), so callers back off instead of
    hammering a full queue."""

    def __init__(self, limit: int, queue: int, timeout_s: float) -> None:
        self._slots = asyncio.Semaphore(limit)
        self.limit, self.queue, self.timeout_s = limit, queue, timeout_s
        self.waiting = 0
        self._released: deque[float] = deque(maxlen=_DRAIN_WINDOW)

    def retry_after_ms(self) -> int:
        """The time for the runs queued now (and this one) to get a slot, at the rate
        slots came free lately; INFRA_RETRY_AFTER_MS before there is a rate to go by."""
        released = self._released
        if len(released) < 2 or released[-1] <= released[0]:
            return INFRA_RETRY_AFTER_MS
        per_s = (len(released) - 1) / (released[-1] - released[0])
        wait_ms = (self.waiting + 1) / per_s * 1000
        return int(min(max(wait_ms, INFRA_RETRY_AFTER_MS), _MAX_RETRY_AFTER_MS))

    def free(self) -> bool:
        """Whether a run would start now, with nobody waiting before it."""
        return not self._slots.locked() and self.waiting == 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self.waiting >= self.queue:
            raise _Busy(
                f"all {self.limit} container slots are busy and {self.waiting} runs are queued",
                self.retry_after_ms(),
            )
        self.waiting += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise _Busy(
                f"no container slot came free within {self.timeout_s:g} s ({self.limit} running)",
                self.retry_after_ms(),
            ) from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._released.append(time.monotonic())
            self._slots.release()


@dataclass(eq=False)
class ContainerSession:
    """A dedicated container whose interpreter keeps its globals across runs."""

    container: Container
    limits: EffectiveLimits
    alive: bool = True
    frozen: bool = False  # paused between runs (ContainerBackend._freeze)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ContainerBackend:
    kind = Backend.CONTAINER

    def __init__(
        self, settings: ContainerSettings, *, pool_limits: EffectiveLimits | None = None
    ) -> None:
        """`pool_limits`: what the warm pool's containers are shaped for (the server's
        default policy); None: no pool, every run starts its own container."""
        image, runtime = settings.image, settings.runtime
        pool_size, max_concurrency = settings.pool_size, settings.max_concurrency
        self.image = image
        self._image_modules: dict[str, frozenset[str]] = {}
        self.runtime: Runtime = runtime
        self.instance = secrets.token_hex(8)
        labels = {
            OWNER_LABEL: OWNER,
            SCOPE_LABEL: settings.scope,
            INSTANCE_LABEL: self.instance,
            OWNER_PROCESS_LABEL: owner_process(),
        }
        self._engine = Engine(
            docker_host=settings.docker_host,
            labels=labels,
            max_pool=pool_size + 2 * max_concurrency + 8,
        )
        self._threads = ThreadPoolExecutor(
            max_workers=2 * max_concurrency + REFILL_PARALLELISM + 4,
            thread_name_prefix="container",
        )
        self._pool_shape = (
            Shape.of(pool_limits, image=image, runtime=runtime) if pool_limits is not None else None
        )
        self.pool: WarmPool[Container] | None = None
        if self._pool_shape is not None and pool_size > 0:
            shape = self._pool_shape
            self.pool = WarmPool(
                size=pool_size, launch=lambda: self._launch(shape), discard=self._discard
            )
        self._admission = _Admission(max_concurrency, settings.queue_size, settings.queue_timeout_s)
        self._removals: set[asyncio.Task[None]] = set()
        self._freezes: set[asyncio.Task[None]] = set()
        self._sessions: set[ContainerSession] = set()
        self._busy: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Reaps what a crashed predecessor left and starts filling the pool. An engine
        that does not answer yet is not fatal: runs report INFRA_UNAVAILABLE until it does."""
        try:
            reaped = await self._call(self._reap_leftovers)
            if reaped:
                log.info("removed leftover sandbox containers", count=reaped)
            if not await self._call(self._engine.image_exists, self.image):
                log.warning("sandbox image missing; build it with `make image`", image=self.image)
        except Exception as exc:
            log.warning("container engine not reachable", error=f"{type(exc).__name__}: {exc}")
        if self.pool is not None:
            self.pool.start()

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.stop()
        for task in list(self._freezes):
            task.cancel()
        for session in list(self._sessions):
            await self.close_session(session)
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)
        # Launches that were in flight when the pool stopped finish on their threads.
        await asyncio.to_thread(self._threads.shutdown, wait=True)
        with contextlib.suppress(Exception):
            for container_id in self._engine.list_ours(instance=self.instance):
                self._engine.remove(container_id)
        self._engine.close()

    def _reap_leftovers(self) -> int:
        reaped = 0
        for container_id, labels in self._engine.list_scope():
            if owner_process_gone(labels.get(OWNER_PROCESS_LABEL, "")):
                self._engine.remove(container_id)
                reaped += 1
        return reaped

    # -- runs -----------------------------------------------------------------------

    def has_free_slot(self) -> bool:
        """Whether a run would get a slot at once (background work waits for this)."""
        return self._admission.free()

    async def run(self, spec: RunSpec, session: BackendSession | None = None) -> ExecutionResult:
        if session is not None:
            assert isinstance(session, ContainerSession)
            return await self._run_in_session(session, spec)
        return await self._run_fresh(spec)

    async def run_tools(self, spec: RunSpec, host: ToolHost) -> ExecutionResult:
        """See ExecutionBackend.run_tools. A container cannot be checkpointed: a resumed
        run starts the code again (`spec.resume` is not used) and the host answers the
        calls it already answered (ToolHost.ask only; the container's clock is its own).
        `random` is seeded with `spec.seed`, so a replay draws the same numbers.
        Cancellation kills the container and propagates; so does CheckpointMismatch."""
        bridge = ToolBridge(asyncio.get_running_loop(), host, spec.tools)
        result = await self._run_fresh(spec, tools=bridge, seed=spec.seed)
        bridge.reraise()
        return result

    async def _run_fresh(
        self, spec: RunSpec, *, tools: ToolBridge | None = None, seed: int | None = None
    ) -> ExecutionResult:
        """One run in a container of its own (warm from the pool when one fits), which is
        discarded afterwards."""
        shape = Shape.of(
            spec.limits, image=spec.image or self.image, runtime=spec.runtime or self.runtime
        )
        try:
            async with self._admission.slot():
                container = await self._acquire(shape, spec.limits)
                if isinstance(container, ExecutionResult):
                    return container
                try:
                    result, _ = await self._execute(
                        container, spec, keep=False, tools=tools, seed=seed
                    )
                finally:
                    self._discard(container)
                return result
        except _Busy as busy:
            return _busy_result(busy.message, busy.retry_after_ms)

    async def open_session(self, limits: EffectiveLimits) -> ContainerSession:
        """A container of its own. When a run in it leaves a thread or a process of the
        code's running (the supervisor says so in its result frame), the container is
        frozen (docker pause) once the result is out and thawed for the next run: what
        the code leaves running does not run between executions."""
        shape = Shape.of(limits, image=self.image, runtime=self.runtime)
        container = await self._acquire(shape, limits)
        if isinstance(container, ExecutionResult):
            assert container.failure is not None
            failure = container.failure
            raise RequestError.of(
                failure.kind, failure.message, retry_after_ms=failure.retry_after_ms
            )
        session = ContainerSession(container=container, limits=limits)
        self._sessions.add(session)
        return session

    async def close_session(self, session: BackendSession) -> None:
        assert isinstance(session, ContainerSession)
        session.alive = False
        if session in self._sessions:
            self._sessions.discard(session)
            self._discard(session.container)

    async def _run_in_session(self, session: ContainerSession, spec: RunSpec) -> ExecutionResult:
        async with session.lock:
            if not session.alive:
                return ExecutionResult.failed(
                    Failure.of(FailureKind.CORRUPT_STATE, "the session's container was lost"),
                    backend=Backend.CONTAINER,
                )
            container = session.container
            try:
                async with self._admission.slot():
                    if session.frozen:
                        try:
                            await self._call(self._engine.unpause, container.id)
                        except Exception as exc:  # gone, or the engine cannot serve
                            await self.close_session(session)
                            return _lost(exc)
                        session.frozen = False
                    result, signals = await self._execute(container, spec, keep=True)
            except _Busy as busy:
                return _busy_result(busy.message, busy.retry_after_ms)
            except asyncio.CancelledError:
                # The job may still be running in there; the state is no longer known.
                await self.close_session(session)
                raise
            if signals.frame is None:
                # Killed at a cap, or died: the interpreter and its state are gone.
                await self.close_session(session)
                return result
            if signals.frame.get("left_running") is False:
                return result  # nothing of the code's runs between jobs: nothing to freeze
            task = asyncio.get_running_loop().create_task(self._freeze(session))
            self._freezes.add(task)
            task.add_done_callback(self._freezes.discard)
            return result

    async def _freeze(self, session: ContainerSession) -> None:
        """Pauses a session's container between runs (under its lock: a run that comes
        first finds it not frozen yet and needs no thaw)."""
        async with session.lock:
            if not session.alive or session.frozen:
                return
            try:
                await self._call(self._engine.pause, session.container.id)
            except Exception as exc:
                # Left running, what the code started would go on using the CPU.
                log.warning("could not freeze a session's container; closing it", error=repr(exc))
                await self.close_session(session)
                return
            session.frozen = True

    async def _acquire(self, shape: Shape, limits: EffectiveLimits) -> Container | ExecutionResult:
        """A ready container of `shape`: from the warm pool when it has one, else started
        now. A failure to start one comes back as the result to return."""
        if self.pool is not None and shape == self._pool_shape:
            warm = self.pool.take()
            if warm is not None:
                return warm
        try:
            return await self._launch(shape)
        except Exception as exc:
            signals = ContainerSignals(limits=limits, image=shape.image)
            failure = map_container_outcome(exc, signals)
            assert failure is not None
            return ExecutionResult.failed(failure, backend=Backend.CONTAINER)

    async def _launch(self, shape: Shape) -> Container:
        future = asyncio.get_running_loop().run_in_executor(
            self._threads, conversation.launch, self._engine, shape
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The engine's thread goes on starting it: discard it once it is up, or it
            # stays running until the server stops (a request whose deadline passed).
            future.add_done_callback(self._discard_launched)
            raise

    def _discard_launched(self, future: asyncio.Future[Container]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._discard(future.result())

    async def _execute(
        self,
        container: Container,
        spec: RunSpec,
        *,
        keep: bool,
        tools: ToolBridge | None = None,
        seed: int | None = None,
    ) -> tuple[ExecutionResult, ContainerSignals]:
        limits = spec.limits
        capture = OutputCapture(limits.output_bytes, spec.on_output)
        signals = ContainerSignals(
            limits=limits, image=container.shape.image, seq=container.jobs + 1
        )
        job = job_frame(
            seq=container.jobs + 1,
            code=spec.code,
            inputs=spec.inputs,
            stdin=spec.stdin,
            keep=keep,
            max_recursion_depth=limits.max_recursion_depth,
            output_bytes=limits.output_bytes,
            memory_bytes=limits.memory_bytes,
            tools=tools.tools if tools is not None else None,
            seed=seed,
            denied_imports=spec.denied_imports,
        )
        if tools is not None:
            signals.tool_errors = tools.tool_errors
        error: Exception | None = None
        started = time.monotonic()
        self._busy.add(container.id)
        try:
            await self._call(
                conversation.execute, self._engine, container, job, capture, signals, tools
            )
        except asyncio.CancelledError:
            if tools is not None:
                tools.cancel()  # wakes the conversation's thread if it waits on an answer
            raise
        except Exception as exc:
            error = exc
        finally:
            self._busy.discard(container.id)
        failure = map_container_outcome(error, signals)
        frame = signals.frame or {}
        usage = frame.get("usage") or {}
        if frame:
            exit_code = int(frame.get("exit_code") or 0)
        elif signals.exit_code is not None:
            exit_code = signals.exit_code
        else:
            exit_code = 0 if failure is None else 1
        result = ExecutionResult(
            ok=failure is None,
            backend=Backend.CONTAINER,
            stdout=capture.text("stdout"),
            stdout_truncated=capture.truncated["stdout"],
            stderr=capture.text("stderr"),
            stderr_truncated=capture.truncated["stderr"],
            result_json=frame.get("value") if failure is None else None,
            exit_code=exit_code,
            failure=failure,
            usage=Usage(
                # The code's time: waits for tool answers are not its own.
                wall_ms=round((time.monotonic() - started - signals.tool_wait_s) * 1000),
                cpu_ms=usage.get("cpu_ms"),
                peak_memory_bytes=usage.get("peak_memory_bytes"),
            ),
        )
        return result, signals

    # -- plumbing -------------------------------------------------------------------

    def _discard(self, container: Container) -> None:
        """Removes `container` in the background; stop() waits for all removals."""

        def remove() -> None:
            self._engine.remove(container.id)
            container.channel.close()

        task = asyncio.get_running_loop().create_task(self._call(remove))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    @property
    def default_image(self) -> str:
        return self.image

    async def provided_modules(self, image: str) -> frozenset[str]:
        """The modules `image` adds to the standard library, as its label says (read
        once per image; an image without the label, or an engine error, adds none)."""
        if image not in self._image_modules:
            labels = await self._call(self._engine.image_labels, image)
            self._image_modules[image] = frozenset(labels.get(MODULES_LABEL, "").split())
        return self._image_modules[image]

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, lambda: fn(*args, **kwargs))

    async def settled(self, timeout_s: float = 60.0) -> None:
        """Waits until every discarded container is removed and the pool is full again."""
        async with asyncio.timeout(timeout_s):
            while self._removals:
                await asyncio.gather(*self._removals, return_exceptions=True)
            if self.pool is not None:
                await self.pool.wait_filled(timeout_s)

    def running_ids(self) -> set[str]:
        """Ids of the containers running a job right now."""
        return set(self._busy)

    async def containers(self) -> list[str]:
        """Ids of the containers this instance has now (for tests and benchmarks)."""
        return await self._call(self._engine.list_ours, instance=self.instance)


def _lost(exc: Exception) -> ExecutionResult:
    """The session's container could not be thawed for a run: the run did not start,
    and the session's state is gone with its container."""
    return ExecutionResult.failed(
        Failure.of(
            FailureKind.CORRUPT_STATE,
            f"the session's container was lost ({type(exc).__name__}: {first_line(str(exc))})",
        ),
        backend=Backend.CONTAINER,
    )


def _busy_result(message: str, retry_after_ms: int) -> ExecutionResult:
    return ExecutionResult.failed(
        Failure.of(
            FailureKind.INFRA_UNAVAILABLE,
            f"the container backend is at capacity: {message}; retry in "
            f"{retry_after_ms / 1000:.1f} s",
            retry_after_ms=retry_after_ms,
        ),
        backend=Backend.CONTAINER,
    )
