"""The Monty backend: a pool of Monty worker processes (pydantic-monty's AsyncMonty)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic_monty as pm

from sandbox.backends.base import BackendSession, RunSpec
from sandbox.backends.monty.outcome import (
    HOST_GRACE_S,
    DeniedCalls,
    RunSignals,
    map_monty_outcome,
    monty_result,
)
from sandbox.backends.monty.sealed import SealedLimits, SealedSession
from sandbox.backends.monty.settings import MontySettings
from sandbox.backends.monty.supply import SessionSupply
from sandbox.backends.monty.tools import drive_tools, tool_os_policy
from sandbox.backends.tools import ToolHost
from sandbox.core.limits import EffectiveLimits
from sandbox.core.output import OutputCapture
from sandbox.errors import Unavailable
from sandbox_client import Backend, ExecutionResult, Failure, FailureKind


@dataclass(eq=False)
class MontySessionHandle:
    session: SealedSession
    limits: EffectiveLimits
    alive: bool = True
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _OsCallRecorder:
    """The `os=` handler: records every OS call Monty could not serve (all of them, with
    no mounts) so a denial is classified POLICY_VIOLATION, then lets Monty deny it. What it
    keeps is bounded (DeniedCalls), whatever the code passes and however often."""

    def __init__(self) -> None:
        self.denied = DeniedCalls()

    def __call__(self, *, name: str, args: tuple[Any, ...], **_: Any) -> Any:
        self.denied.add(name, args)
        return pm.NOT_HANDLED


class _StdinReader:
    """Backs `input()`: Monty has no stdin, so the request's stdin is served line by line."""

    def __init__(self, stdin: str) -> None:
        self._lines: Iterator[str] = iter(stdin.splitlines())

    def __call__(self, prompt: str = "") -> str:
        try:
            return next(self._lines)
        except StopIteration:
            raise EOFError("EOF when reading a line") from None


class MontyBackend:
    kind = Backend.MONTY

    def __init__(self, settings: MontySettings) -> None:
        self.settings = settings
        self._pool_args: dict[str, Any] = {
            "min_processes": settings.min_workers,
            "max_processes": settings.max_workers,
            "checkout_timeout": settings.checkout_timeout_s,
            "request_timeout": settings.request_timeout_s,
        }
        # Parked sessions hold workers; keep at least one worker free of them.
        self._warm = max(0, min(settings.warm_sessions, settings.max_workers - 1))
        self._pool: pm.AsyncMonty | None = None
        self._supply: SessionSupply | None = None
        self._mount_dirs: dict[tuple[str, str, bool], pm.MountDir] = {}

    async def start(self) -> None:
        if self._pool is None:
            pool = pm.AsyncMonty(**self._pool_args)
            await pool.__aenter__()
            self._pool = pool
            self._supply = SessionSupply(self._checkout, self._warm)

    async def stop(self) -> None:
        supply, self._supply = self._supply, None
        if supply is not None:
            await supply.close()
        for mount in self._mount_dirs.values():
            mount.close()
        self._mount_dirs.clear()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.__aexit__(None, None, None)
            del pool
            # pydantic-monty aborts the interpreter if a pool that lost a worker is
            # finalized during interpreter shutdown; collect it while the runtime is whole.
            gc.collect()

    def _checkout(
        self, limits: EffectiveLimits, os_policy: pm.OSPolicy | None = None
    ) -> SealedSession:
        """A session (not entered) enforcing `limits`, sealed (sealed.py): its limit
        errors are told from the code's own by the exact values they name."""
        if self._pool is None:
            raise RuntimeError("MontyBackend.start() was not awaited")
        sealed = SealedLimits.of(limits)
        session = self._pool.checkout(
            limits=sealed.resource_limits(),
            # No per-call cap: a capped sleep would return early and lie to the code. The
            # total-sleep budget is charged before each wait, so an over-long sleep fails
            # at once with TimeoutError instead of holding the worker.
            os_policy={"sleep_system_max": float("inf"), **(os_policy or {})},
        )
        return SealedSession(session=session, sealed=sealed)

    def _mounts(self, wanted: tuple[tuple[str, str, bool], ...]) -> list[pm.MountDir]:
        """MountDirs for `wanted`, opened once and reused (Monty's advice: each holds its
        directory open)."""
        mounts = []
        for host, guest, read_only in wanted:
            key = (host, guest, read_only)
            mount = self._mount_dirs.get(key)
            if mount is None:
                mode: Literal["read-only", "read-write"] = (
                    "read-only" if read_only else "read-write"
                )
                mount = pm.MountDir(host_path=host, virtual_path=guest, mode=mode)
                self._mount_dirs[key] = mount
            mounts.append(mount)
        return mounts

    @contextlib.asynccontextmanager
    async def checkout_session(
        self, limits: EffectiveLimits, *, os_policy: pm.OSPolicy | None = None
    ) -> AsyncIterator[SealedSession]:
        """A fresh, entered session for one execution; returned to the pool afterwards
        (in the background, off the caller's path). `os_policy` (e.g. a pinned clock and
        seed, for durable runs) is fixed at checkout, so such a session is never a warm one."""
        if self._supply is None:
            raise RuntimeError("MontyBackend.start() was not awaited")
        if os_policy is not None:
            pinned = self._checkout(limits, os_policy)
            async with pinned.session:
                yield pinned
            return
        session = await self._supply.take(limits)
        try:
            yield session
        finally:
            self._supply.release(session)

    async def run_tools(self, spec: RunSpec, host: ToolHost) -> ExecutionResult:
        """See ExecutionBackend.run_tools: resumes from spec.resume's dump, checkpoints
        after each answer, and reads the clock through the host so a resumed run sees
        the readings the interrupted one saw."""
        try:
            async with self.checkout_session(
                spec.limits, os_policy=tool_os_policy(spec.seed)
            ) as session:
                return await drive_tools(session, spec, host)
        except TimeoutError:
            return ExecutionResult.failed(
                Failure.of(
                    FailureKind.INFRA_UNAVAILABLE, "every Monty worker is busy", retry_after_ms=1000
                ),
                backend=Backend.MONTY,
            )

    async def open_session(self, limits: EffectiveLimits) -> MontySessionHandle:
        session = self._checkout(limits)
        try:
            await session.session.__aenter__()
        except TimeoutError:
            raise Unavailable(
                "every Monty worker is busy; no session can be opened now",
                retry_after_ms=1000,
            ) from None
        return MontySessionHandle(session=session, limits=limits)

    async def close_session(self, session: BackendSession) -> None:
        assert isinstance(session, MontySessionHandle)
        session.alive = False
        # A lost worker's session raises on exit; the pool has already replaced it.
        with contextlib.suppress(pm.MontyError, RuntimeError):
            await session.session.session.__aexit__(None, None, None)

    async def run(self, spec: RunSpec, session: BackendSession | None = None) -> ExecutionResult:
        if session is not None:
            assert isinstance(session, MontySessionHandle)
            async with session.lock:
                if not session.alive:
                    return ExecutionResult.failed(
                        Failure.of(FailureKind.CORRUPT_STATE, "the session's sandbox was lost")
                    )
                result = await self._feed(session.session, spec)
                failure = result.failure
                if failure is not None and failure.kind in _SESSION_ENDING:
                    await self.close_session(session)
                return result
        supply = self._supply
        if supply is None:
            raise RuntimeError("MontyBackend.start() was not awaited")
        try:
            checked_out = await supply.take(spec.limits)
        except TimeoutError:
            return ExecutionResult.failed(
                Failure.of(
                    FailureKind.INFRA_UNAVAILABLE,
                    "every Monty worker is busy",
                    retry_after_ms=1000,
                ),
                backend=Backend.MONTY,
            )
        try:  # checkout_session() without its context manager: this is the hot path
            return await self._feed(checked_out, spec)
        finally:
            supply.release(checked_out)

    async def _feed(self, checked_out: SealedSession, spec: RunSpec) -> ExecutionResult:
        try:
            mounts = self._mounts(spec.mounts)
        except (OSError, ValueError) as exc:
            return ExecutionResult.failed(
                Failure.of(
                    FailureKind.INFRA_UNAVAILABLE,
                    f"a directory the policy mounts cannot be opened: {exc}",
                    retry_after_ms=5000,
                ),
                backend=Backend.MONTY,
            )
        capture = OutputCapture(spec.limits.output_bytes, spec.on_output)
        recorder = _OsCallRecorder()
        signals = RunSignals(
            limits=spec.limits,
            sealed=checked_out.sealed,
            code=spec.code,
            fallback_follows=spec.fallback_follows,
        )
        started = time.monotonic()
        error: pm.MontyError | None = None
        value: Any = None
        try:
            async with asyncio.timeout(spec.limits.wall_time_s + HOST_GRACE_S):
                value = await checked_out.session.feed_run(
                    spec.code,
                    inputs=dict(spec.inputs) or None,
                    external_lookup={"input": _StdinReader(spec.stdin)},
                    print_callback=capture,
                    os=recorder,
                    mount=mounts or None,
                )
        except pm.MontyError as exc:
            error = exc
        except TimeoutError:
            signals.host_timed_out = True
        signals.elapsed_s = time.monotonic() - started
        signals.output_exceeded = capture.exceeded
        signals.denied = recorder.denied
        return monty_result(
            value,
            map_monty_outcome(error, signals),
            limits=spec.limits,
            elapsed_s=signals.elapsed_s,
            stdout=capture.text("stdout"),
            stdout_truncated=capture.truncated["stdout"],
            stderr=capture.text("stderr"),
            stderr_truncated=capture.truncated["stderr"],
        )


# After these a session's interpreter cannot be trusted (Monty: "discard the session
# rather than feeding it again" after a time limit) or is gone.
_SESSION_ENDING = frozenset({FailureKind.TIMEOUT, FailureKind.SANDBOX_CRASH})
