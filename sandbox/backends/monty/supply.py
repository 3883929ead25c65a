"""Fresh Monty sessions checked out ahead of demand, so a run skips the checkout, and
used sessions handed back to the pool off the request's path.

Sessions are parked for one set of limits at a time: the last one asked for, which under
real traffic is the default policy's. At most `depth` sessions are parked or being parked,
and depth stays below the pool's worker count, so parked sessions never starve a checkout
for other limits."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_monty as pm

from sandbox.backends.monty.sealed import SealedSession
from sandbox.core.limits import EffectiveLimits

Checkout = Callable[[EffectiveLimits], SealedSession]


class SessionSupply:
    def __init__(self, checkout: Checkout, depth: int) -> None:
        self._checkout = checkout
        self._depth = depth
        self._limits: EffectiveLimits | None = None
        self._parked: deque[SealedSession] = deque()
        self._parking = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def take(self, limits: EffectiveLimits) -> SealedSession:
        """An entered session with `limits` that has run nothing yet."""
        if limits != self._limits:
            self._limits = limits
            while self._parked:
                self.release(self._parked.popleft())
        session = None
        while self._parked and session is None:
            session = self._parked.popleft()
            if not _worker_alive(session):
                # Its worker died while parked (killed, OOM): never hand out a dead one.
                self.release(session)
                session = None
        if session is None:
            self._refill()
            session = self._checkout(limits)
            await session.session.__aenter__()
        return session

    def release(self, session: SealedSession) -> None:
        """Returns a used (or unwanted) session to the pool in the background."""
        self._spawn(self._exit(session))

    async def close(self) -> None:
        self._closed = True
        while self._parked:
            await _exit_quietly(self._parked.popleft())
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _short(self) -> bool:
        return not self._closed and len(self._parked) + self._parking < self._depth

    def _refill(self) -> None:
        while self._short():
            assert self._limits is not None
            self._parking += 1
            self._spawn(self._park(self._limits))

    async def _park(self, limits: EffectiveLimits) -> None:
        try:
            session = self._checkout(limits)
            await session.session.__aenter__()
        except (pm.MontyError, TimeoutError, RuntimeError):
            return  # no worker to spare now; a later take() checks out directly
        finally:
            self._parking -= 1
        if self._closed or limits != self._limits:
            await _exit_quietly(session)
        else:
            self._parked.append(session)

    async def _exit(self, session: SealedSession) -> None:
        await _exit_quietly(session)
        if self._short():  # park the next one in this task: a task per run, not two
            assert self._limits is not None
            self._parking += 1
            await self._park(self._limits)
        self._refill()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _worker_alive(session: SealedSession) -> bool:
    pid = session.session.worker_pid
    if pid is None:
        return False
    try:
        # Workers are our children: one non-reaping syscall tells whether one has exited
        # (a killed worker is a zombie until the pool reaps it).
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        pass  # not our child (a differently built pool): ask /proc
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


async def _exit_quietly(session: SealedSession) -> None:
    with contextlib.suppress(pm.MontyError, RuntimeError):
        await session.session.__aexit__(None, None, None)
