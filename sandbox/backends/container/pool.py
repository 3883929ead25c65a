"""A warm pool: containers whose runner is started, sandboxed and blocked reading its job,
so an execution pays no container start-up. Each is handed out once; the pool refills
itself in the background."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import structlog

from sandbox.tasks import cancel_and_wait

log = structlog.get_logger("sandbox.container.pool")


class Warm(Protocol):
    def looks_alive(self) -> bool: ...


W = TypeVar("W", bound=Warm)

# Containers started at once while refilling; more only makes dockerd slower on 2 cores.
REFILL_PARALLELISM = 2
_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)


class WarmPool(Generic[W]):
    def __init__(
        self,
        *,
        size: int,
        launch: Callable[[], Awaitable[W]],
        discard: Callable[[W], None],
    ) -> None:
        self.size = size
        self._launch = launch
        self._discard = discard
        self._ready: deque[W] = deque()
        self._wake = asyncio.Event()
        self._filled = asyncio.Event()  # set whenever a container joins the pool
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # consecutive launch failures; reset by a success

    @property
    def ready(self) -> int:
        return len(self._ready)

    def start(self) -> None:
        if self._task is None and self.size > 0:
            self._task = asyncio.create_task(self._refill_forever(), name="warm-pool-refill")

    def take(self) -> W | None:
        """A ready container, or None when the pool is empty right now."""
        while self._ready:
            warm = self._ready.popleft()
            self._wake.set()
            if warm.looks_alive():
                return warm
            log.warning("warm container died while waiting; discarding it")
            self._discard(warm)
        self._wake.set()
        return None

    async def wait_filled(self, timeout_s: float) -> bool:
        """Waits until the pool holds `size` containers (for tests and benchmarks)."""
        async with asyncio.timeout(timeout_s):
            while len(self._ready) < self.size:
                self._filled.clear()
                await self._filled.wait()
        return True

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        ready, self._ready = list(self._ready), deque()
        for warm in ready:
            self._discard(warm)

    async def _refill_forever(self) -> None:
        while True:
            missing = self.size - len(self._ready)
            if missing <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = min(missing, REFILL_PARALLELISM)
            results = await asyncio.gather(
                *(self._launch() for _ in range(batch)), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    if isinstance(result, asyncio.CancelledError):
                        raise result
                    self.failures += 1
                    log.warning("warm container launch failed", error=repr(result))
                else:
                    self.failures = 0
                    self._ready.append(result)
                    self._filled.set()
            if self.failures:
                await asyncio.sleep(_BACKOFF_S[min(self.failures, len(_BACKOFF_S)) - 1])
