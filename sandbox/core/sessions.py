"""Live sessions: interpreter state kept across executions, bounded in count and idle time."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from sandbox.backends.base import BackendSession, ExecutionBackend
from sandbox.config import SessionSettings
from sandbox.core.limits import EffectiveLimits
from sandbox.errors import CorruptState, NotFound, Throttled
from sandbox.policy.model import Policy

# How many lost session ids we remember, to answer CORRUPT_STATE rather than "unknown".
_LOST_MEMORY = 4096


@dataclass(eq=False, kw_only=True)
class SessionEntry:
    id: str
    backend: ExecutionBackend
    handle: BackendSession
    policy: Policy
    limits: EffectiveLimits
    # The tenant that opened it; no other tenant can use, close or even see it.
    tenant: str = ""
    last_used: float = field(default_factory=time.monotonic)


class SessionRegistry:
    def __init__(self, settings: SessionSettings) -> None:
        self.max_sessions = settings.max_open
        self.idle_timeout_s = settings.idle_timeout_s
        self._entries: dict[str, SessionEntry] = {}
        # Lost session id -> the tenant that owned it.
        self._lost: OrderedDict[str, str | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def create(
        self,
        backend: ExecutionBackend,
        policy: Policy,
        limits: EffectiveLimits,
        *,
        tenant: str = "",
    ) -> SessionEntry:
        if len(self._entries) >= self.max_sessions:
            raise Throttled(
                f"the server holds its maximum of {self.max_sessions} sessions; "
                "close one or wait for an idle one to expire",
                retry_after_ms=int(self.idle_timeout_s * 1000),
            )
        handle = await backend.open_session(limits)
        entry = SessionEntry(
            id="ses_" + secrets.token_urlsafe(16),
            backend=backend,
            handle=handle,
            policy=policy,
            limits=limits,
            tenant=tenant,
        )
        self._entries[entry.id] = entry
        return entry

    def count(self, *, tenant: str, policy: str) -> int:
        return sum(
            1 for e in self._entries.values() if e.tenant == tenant and e.policy.name == policy
        )

    def _owned(self, session_id: str, tenant: str | None) -> SessionEntry | None:
        entry = self._entries.get(session_id)
        if entry is not None and tenant is not None and entry.tenant != tenant:
            # Another tenant's session answers exactly like one that never existed.
            return None
        return entry

    def get(self, session_id: str, *, tenant: str | None = None) -> SessionEntry:
        """The live session; `tenant`, when given, must be the one that opened it."""
        entry = self._owned(session_id, tenant)
        if entry is not None:
            if entry.handle.alive:
                entry.last_used = time.monotonic()
                return entry
            self._forget(session_id)
        if session_id in self._lost and (tenant is None or self._lost[session_id] == tenant):
            raise CorruptState(
                f"session {session_id!r} was lost (its sandbox crashed, timed out or expired); "
                "start a new session",
                field="session_id",
            )
        raise NotFound(f"unknown session {session_id!r}", field="session_id")

    def discard_if_dead(self, entry: SessionEntry) -> None:
        if not entry.handle.alive:
            self._forget(entry.id)

    async def close(self, session_id: str, *, tenant: str | None = None) -> None:
        entry = self._owned(session_id, tenant)
        if entry is None:
            raise NotFound(f"unknown session {session_id!r}", field="session_id")
        del self._entries[session_id]
        await entry.backend.close_session(entry.handle)

    async def expire_idle(self) -> int:
        cutoff = time.monotonic() - self.idle_timeout_s
        stale = [e for e in self._entries.values() if e.last_used < cutoff]
        for entry in stale:
            self._forget(entry.id)
            await entry.backend.close_session(entry.handle)
        return len(stale)

    async def run_expiry(self) -> None:
        """Closes idle sessions until cancelled."""
        interval = max(0.05, min(self.idle_timeout_s / 4, 5.0))
        while True:
            await asyncio.sleep(interval)
            await self.expire_idle()

    async def close_all(self) -> None:
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            await entry.backend.close_session(entry.handle)

    def _forget(self, session_id: str) -> None:
        entry = self._entries.pop(session_id, None)
        self._lost[session_id] = entry.tenant if entry is not None else None
        while len(self._lost) > _LOST_MEMORY:
            self._lost.popitem(last=False)
