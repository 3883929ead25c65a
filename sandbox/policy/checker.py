"""The server's checker processes: a policy's static check (static_check.findings) on
any source larger than a few hundred bytes runs in one of them, never on the event loop,
and within the policy's `static_check_ms` of CPU time (and WALL_FACTOR times that of
wall time: the processes run at a lower priority, and a busy machine should not make an
ordinary source "too complex").

`ast.parse` holds the GIL and some sources parse in time far out of proportion to their
size (an 85,000-placeholder f-string: 41 s), so neither the loop nor a thread of the
server may run it. A small pool of processes (`python -m sandbox.policy.static_check`)
does, started with the server: a check that runs past its budget ends its process
(another is started in its place) and the request is refused. A source of at most
INLINE_MAX_BYTES is parsed inline: measured, the slowest such source parses in about a
millisecond (an f-string of placeholders, the worst construction found: 0.6 ms at 256
bytes, 2.9 ms at 1 KiB, on a loaded 2-core machine), less than the round trip to a
process would cost.

A request waits for a free checker at most WALL_FACTOR times its budget; waiters are
served one tenant at a time in turn, and no tenant holds every process at once, so one
tenant's stream of slow sources leaves a checker to the others. Findings are cached by
the source's digest (agents resend the same code), and so is a source that ran out of
time, which is then refused at once."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TypeVar

import structlog

from sandbox.policy import static_check
from sandbox.policy.static_check import REPLY_HEADER, REQUEST_HEADER, CheckFailed, Violation

log = structlog.get_logger("sandbox.checker")

# Sources up to this size are parsed on the loop (see the module docstring).
INLINE_MAX_BYTES = 512
# Findings of that many short sources are kept (at most ~2 MiB of source): batches and
# agents send the same short code again and again, and parsing it is a fifth of a short
# execution's cost in the server. findings() is a pure function of the source.
INLINE_CACHE_ENTRIES = 4096
_inline_findings = functools.lru_cache(maxsize=INLINE_CACHE_ENTRIES)(static_check.findings)
# Checker processes per server; one tenant holds at most all but one of them.
PROCESSES = 3
# Sources whose findings are remembered, and the most findings remembered for one.
_CACHE_ENTRIES = 1024
_CACHE_MAX_FINDINGS = 64
# How long a starting process may take before the check that waits for it gives up.
_SPAWN_TIMEOUT_S = 30.0


class CheckOverBudget(Exception):
    """The check did not finish within its budget; the source is refused."""

    def __init__(self, budget_s: float) -> None:
        super().__init__(f"the check did not finish within {budget_s:g} s")
        self.budget_s = budget_s


class CheckersBusy(Exception):
    """No checker came free within the request's budget."""

    def __init__(self, budget_s: float) -> None:
        super().__init__(f"no checker came free within {budget_s:g} s")
        self.budget_s = budget_s


class CheckerFailed(Exception):
    """The checker could not check this source (it ran out of memory, or died)."""


class _Died(Exception):
    """The process ended before it answered."""


class _OutOfTime(Exception):
    """The process ended itself at the budget's CPU time."""


T = TypeVar("T")


class _Process:
    """One checker process. Its pipes are used blocking, from the checker's own threads:
    the process is started with subprocess (vfork and exec, so gRPC's fork handlers never
    run in the server), and a kill ends a thread's read with EOF."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin: IO[bytes] = proc.stdin
        self.stdout: IO[bytes] = proc.stdout

    def check(
        self, data: bytes, budget_ms: int, fidelity: bool
    ) -> tuple[tuple[Violation, ...], bool]:
        """One request and its reply (blocks; a checker thread only). Raises
        _OutOfTime when the process used up the budget's CPU time."""
        try:
            self.stdin.write(REQUEST_HEADER.pack(len(data), budget_ms, fidelity) + data)
            self.stdin.flush()
            (size,) = REPLY_HEADER.unpack(_read_exactly(self.stdout, REPLY_HEADER.size))
            body = _read_exactly(self.stdout, size)
        except (OSError, EOFError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            if self.proc.returncode == -static_check.OVER_BUDGET_SIGNAL:
                raise _OutOfTime from None
            raise
        return static_check.decode_reply(body)

    def kill(self) -> None:
        """Kills and reaps the process (blocks briefly)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        for pipe in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def _read_exactly(pipe: IO[bytes], size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = pipe.read(left)
        if not chunk:
            raise EOFError("the checker process closed its output")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class StaticChecker:
    """See the module docstring. `start()` starts the processes (a check before it
    starts them on demand); `stop()` ends them."""

    def __init__(self, processes: int = PROCESSES, *, inline_max_bytes: int = INLINE_MAX_BYTES):
        self.size = max(1, processes)
        self.inline_max_bytes = inline_max_bytes
        self._idle: list[_Process] = []
        self._all: set[_Process] = set()
        self._starting: set[asyncio.Task[None]] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        # Waiters by tenant, served one tenant at a time in turn.
        self._waiting: collections.OrderedDict[str, collections.deque[asyncio.Future[_Process]]]
        self._waiting = collections.OrderedDict()
        self._holding: collections.Counter[str] = collections.Counter()
        self._cache: collections.OrderedDict[bytes, tuple[Violation, ...] | float]
        self._cache = collections.OrderedDict()
        self._stopped = False
        self.killed = 0  # processes killed over budget (for tests and metrics)
        # Checks in flight, starts and kills: a few threads, blocked on pipes most of the time.
        self._threads = self._new_threads()

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self._all]

    def _new_threads(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=2 * self.size + 2, thread_name_prefix="checker")

    async def start(self, *, wait: bool = True) -> None:
        """Starts the processes; `wait`: until they answer (the server does not wait: a
        check that comes first waits for a process instead)."""
        if self._stopped:
            self._threads = self._new_threads()
        self._stopped = False
        self._fill()
        if wait and self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)

    async def stop(self) -> None:
        self._stopped = True
        for task in list(self._starting):
            task.cancel()
        for task in [*self._starting, *self._retiring]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for queue in self._waiting.values():
            for waiter in queue:
                waiter.cancel()
        self._waiting.clear()
        processes, self._all, self._idle = list(self._all), set(), []
        for process in processes:
            await self._in_thread(process.kill)
        self._threads.shutdown(wait=False)

    async def findings(
        self, code: str, *, budget_s: float, tenant: str = "", fidelity: bool = True
    ) -> tuple[Violation, ...]:
        """static_check.findings(code, fidelity=fidelity), within `budget_s` of waiting
        for a process and `budget_s` of its CPU time checking. Raises CheckOverBudget,
        CheckersBusy or CheckerFailed."""
        data = code.encode("utf-8", "surrogatepass")
        if len(data) <= self.inline_max_bytes:
            return _inline_findings(code, fidelity=fidelity)
        digest = hashlib.sha256(data + (b"\x01" if fidelity else b"\x00")).digest()
        cached = self._cache.get(digest)
        if isinstance(cached, tuple):
            self._cache.move_to_end(digest)
            return cached
        if isinstance(cached, float) and budget_s <= cached:
            raise CheckOverBudget(budget_s)  # it ran out of this much time before
        for attempt in (1, 2):
            process = await self._take(tenant, budget_s * static_check.WALL_FACTOR)
            try:
                found = await self._check(process, data, budget_s, fidelity)
            except CheckOverBudget:
                self._remember(digest, float(budget_s))
                log.warning("static check over budget", bytes=len(data), budget_s=budget_s)
                raise
            except _Died as died:
                # A process that died idle (the OOM killer, an operator) is not this
                # source's doing; one that dies twice on it is.
                if attempt == 2:
                    raise CheckerFailed(f"the checker died ({died})") from None
                continue
            finally:
                self._release(tenant)
            if len(found) <= _CACHE_MAX_FINDINGS:
                self._remember(digest, found)
            return found
        raise AssertionError("unreachable")

    async def _check(
        self, process: _Process, data: bytes, budget_s: float, fidelity: bool
    ) -> tuple[Violation, ...]:
        """One check on `process`, which goes back to the pool after it, or is killed
        and replaced (over budget, cancelled, dead, or retiring)."""
        retire = True
        try:
            async with asyncio.timeout(budget_s * static_check.WALL_FACTOR):
                found, retire = await self._in_thread(
                    process.check, data, max(1, round(budget_s * 1000)), fidelity
                )
        except (TimeoutError, _OutOfTime):
            self.killed += 1
            raise CheckOverBudget(budget_s) from None
        except CheckFailed as exc:
            raise CheckerFailed(f"the checker ran out of memory ({exc})") from None
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise _Died(type(exc).__name__) from None
        finally:
            if retire:
                task = asyncio.get_running_loop().create_task(self._retire(process))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            else:
                self._give(process)
        return found

    # -- the pool ------------------------------------------------------------------------

    @property
    def per_tenant(self) -> int:
        """The most processes one tenant holds at once: all but one, which stays for the
        others (all of them when there is only one)."""
        return max(1, self.size - 1)

    async def _take(self, tenant: str, wait_s: float) -> _Process:
        """A process for `tenant` (counted as held by it until _release), waiting in
        turn with other tenants at most `wait_s`."""
        self._fill()
        waiter: asyncio.Future[_Process] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant, collections.deque()).append(waiter)
        self._dispatch()
        try:
            async with asyncio.timeout(wait_s):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed over as we gave up: back to the pool, and no longer held.
                self._release(tenant)
                self._give(waiter.result())
            queue = self._waiting.get(tenant)
            if queue is not None:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
                if not queue:
                    del self._waiting[tenant]
            if isinstance(exc, TimeoutError):
                raise CheckersBusy(wait_s) from None
            raise

    def _release(self, tenant: str) -> None:
        self._holding[tenant] -= 1
        if self._holding[tenant] <= 0:
            del self._holding[tenant]
        self._dispatch()

    def _give(self, process: _Process) -> None:
        """A free process: parked, then handed to the next tenant in turn that waits."""
        if process in self._all and process not in self._idle:
            self._idle.append(process)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hands idle processes to waiters, one tenant at a time in turn, skipping
        tenants that already hold their share."""
        while self._idle:
            for tenant in list(self._waiting):
                queue = self._waiting[tenant]
                while queue and queue[0].done():
                    queue.popleft()  # gave up
                if not queue:
                    del self._waiting[tenant]
                    continue
                if self._holding[tenant] >= self.per_tenant:
                    continue
                waiter = queue.popleft()
                del self._waiting[tenant]
                if queue:
                    self._waiting[tenant] = queue  # to the back of the turn
                self._holding[tenant] += 1
                waiter.set_result(self._idle.pop())
                break
            else:
                return

    async def _retire(self, process: _Process) -> None:
        self._all.discard(process)
        with contextlib.suppress(ValueError):
            self._idle.remove(process)
        await self._in_thread(process.kill)
        self._fill()

    def _fill(self) -> None:
        if self._stopped:
            return
        while len(self._all) + len(self._starting) < self.size:
            task = asyncio.get_running_loop().create_task(self._spawn())
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _spawn(self) -> None:
        started = asyncio.get_running_loop().run_in_executor(self._threads, _popen)
        try:
            async with asyncio.timeout(_SPAWN_TIMEOUT_S):
                proc = await asyncio.shield(started)
        except asyncio.CancelledError:
            # Stopped while it starts: the process is ended once it exists.
            started.add_done_callback(_kill_started)
            raise
        except (OSError, TimeoutError) as exc:
            log.error("cannot start a checker process", error=str(exc))
            await asyncio.sleep(1.0)  # then the next check tries again
            return
        process = _Process(proc)
        try:
            # Ready once it answers: a check never waits for a process's imports.
            async with asyncio.timeout(_SPAWN_TIMEOUT_S):
                await self._in_thread(process.check, b"", 1000, False)
        except (TimeoutError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            log.error("a checker process did not start", error=repr(exc))
            await self._in_thread(process.kill)
            await asyncio.sleep(1.0)
            return
        except asyncio.CancelledError:
            await self._in_thread(process.kill)
            raise
        if self._stopped:
            await self._in_thread(process.kill)
            return
        self._all.add(process)
        self._give(process)

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    def _remember(self, digest: bytes, value: tuple[Violation, ...] | float) -> None:
        self._cache[digest] = value
        self._cache.move_to_end(digest)
        while len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)


def _kill_started(started: asyncio.Future[subprocess.Popen[bytes]]) -> None:
    """On the loop, so it does not wait: subprocess reaps the killed process later."""
    if not started.cancelled() and started.exception() is None:
        proc = started.result()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _popen() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sandbox.policy.static_check"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_environment(),
    )


def _environment() -> dict[str, str]:
    """The server's environment, with the directory this `sandbox` package came from
    first on the path (whatever the server's working directory)."""
    env = dict(os.environ)
    root = str(Path(static_check.__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(
        _unique([root, *env.get("PYTHONPATH", "").split(os.pathsep)])
    )
    return env


def _unique(parts: list[str]) -> Iterator[str]:
    seen: set[str] = set()
    for part in parts:
        if part and part not in seen:
            seen.add(part)
            yield part
