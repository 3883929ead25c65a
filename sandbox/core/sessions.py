"""Live sessions: interpreter state kept across executions, bounded in count and idle time.

A new session is counted against, in this order: the server's `[sessions] max_open`; the
policy's `sessions_per_tenant`, which caps the tenant's sessions under all its policies
together (a tenant holding 3 sessions under any policies may open one under a policy of
`sessions_per_tenant = 4`, not under one of 3); and the tenants file's `max_sessions`
and `session_memory_bytes` (the sum of its open sessions' `limits.memory_bytes`). Over
one: THROTTLED with retry_after_ms and the quota named in the error's metadata; a
session that could never fit (a cap of 0, more memory than the whole quota): refused as
POLICY_VIOLATION. Sessions being opened count from the moment they are admitted, so
concurrent requests cannot all slip under a cap."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from sandbox.backends.base import BackendSession, ExecutionBackend
from sandbox.config import SessionSettings
from sandbox.core.limits import EffectiveLimits
from sandbox.errors import CorruptState, NotFound, PolicyDenied, Throttled
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


@dataclass(frozen=True)
class TenantQuota:
    """A tenant's session quotas from the tenants file (None: no such quota)."""

    sessions: int | None = None
    memory_bytes: int | None = None


@dataclass(frozen=True)
class _Held:
    tenant: str
    memory_bytes: int


class SessionRegistry:
    def __init__(self, settings: SessionSettings) -> None:
        self.max_sessions = settings.max_open
        self.idle_timeout_s = settings.idle_timeout_s
        self._entries: dict[str, SessionEntry] = {}
        # Sessions admitted and still being opened, counted like open ones.
        self._opening: dict[object, _Held] = {}
        # Lost session id -> the tenant that owned it.
        self._lost: OrderedDict[str, str | None] = OrderedDict()
        # Several replicas: this one's tag, written into the ids of the sessions it opens,
        # and where another replica's tag serves (None: unknown), so that a call for a
        # session that reached the wrong replica is told which one holds it.
        self.replica = ""
        self.locate: Callable[[str], str | None] = lambda tag: None

    def __len__(self) -> int:
        return len(self._entries)

    async def create(
        self,
        backend: ExecutionBackend,
        policy: Policy,
        limits: EffectiveLimits,
        *,
        tenant: str = "",
        quota: TenantQuota | None = None,
    ) -> SessionEntry:
        """Opens a session once the caps in the module docstring allow it."""
        self._admit(policy, limits, tenant, quota or TenantQuota())
        token = object()
        self._opening[token] = _Held(tenant, limits.memory_bytes)
        try:
            handle = await backend.open_session(limits)
        finally:
            del self._opening[token]
        entry = SessionEntry(
            id="ses_" + (f"{self.replica}." if self.replica else "") + secrets.token_urlsafe(16),
            backend=backend,
            handle=handle,
            policy=policy,
            limits=limits,
            tenant=tenant,
        )
        self._entries[entry.id] = entry
        return entry

    def count(self, *, tenant: str, policy: str | None = None) -> int:
        """The tenant's sessions, open or being opened (under `policy` only, if given)."""
        opening = 0 if policy is not None else sum(1 for h in self._held() if h.tenant == tenant)
        return opening + sum(
            1
            for e in self._entries.values()
            if e.tenant == tenant and (policy is None or e.policy.name == policy)
        )

    def memory(self, *, tenant: str) -> int:
        """The sum of limits.memory_bytes over the tenant's sessions, open or being opened."""
        return sum(h.memory_bytes for h in self._held() if h.tenant == tenant) + sum(
            e.limits.memory_bytes for e in self._entries.values() if e.tenant == tenant
        )

    def _held(self) -> list[_Held]:
        return list(self._opening.values())

    def _admit(
        self, policy: Policy, limits: EffectiveLimits, tenant: str, quota: TenantQuota
    ) -> None:
        retry_ms = int(self.idle_timeout_s * 1000)
        if len(self._entries) + len(self._opening) >= self.max_sessions:
            raise Throttled(
                f"the server holds its maximum of {self.max_sessions} sessions; "
                "close one or wait for an idle one to expire",
                retry_after_ms=retry_ms,
                metadata={"quota": "max_open", "limit_value": str(self.max_sessions)},
            )
        held = self.count(tenant=tenant)
        caps = [("sessions_per_tenant", policy.sessions_per_tenant, f"policy '{policy.name}'")]
        if quota.sessions is not None:
            caps.append(("max_sessions", quota.sessions, f"tenant '{tenant}'"))
        for name, cap, whose in caps:
            message = (
                f"{whose} allows {cap} sessions per tenant (under all its policies) and "
                f"tenant '{tenant}' holds {held}"
            )
            if cap == 0:
                raise PolicyDenied(message, field="policy", metadata={"quota": name})
            if held >= cap:
                raise Throttled(
                    message,
                    field="policy",
                    retry_after_ms=retry_ms,
                    metadata={"quota": name, "limit_value": str(cap)},
                )
        if quota.memory_bytes is not None:
            memory = self.memory(tenant=tenant)
            wanted, cap = limits.memory_bytes, quota.memory_bytes
            message = (
                f"tenant '{tenant}' may hold {cap} bytes of session memory; its sessions hold "
                f"{memory} and this one asks {wanted} (limits.memory_bytes)"
            )
            metadata = {"quota": "session_memory_bytes", "limit_value": str(cap)}
            if wanted > cap:
                raise PolicyDenied(message, field="limits.memory_bytes", metadata=metadata)
            if memory + wanted > cap:
                raise Throttled(
                    message,
                    field="limits.memory_bytes",
                    retry_after_ms=retry_ms,
                    metadata=metadata,
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
        self._check_elsewhere(session_id)
        raise NotFound(f"unknown session {session_id!r}", field="session_id")

    def _check_elsewhere(self, session_id: str) -> None:
        """Raises NotFound naming the replica that holds `session_id`, if another does.
        (A session lives in its replica's memory: the client routes its calls there.)"""
        tag, dot, _ = session_id.removeprefix("ses_").partition(".")
        if not dot or not self.replica or tag == self.replica:
            return
        address = self.locate(tag)
        where = f" at {address}" if address else ""
        raise NotFound(
            f"session {session_id!r} lives on replica {tag}{where}, not on this one "
            f"({self.replica}): a session's calls must reach the replica that created it "
            "(route them by session, or call that replica's address)",
            field="session_id",
        )

    def discard_if_dead(self, entry: SessionEntry) -> None:
        if not entry.handle.alive:
            self._forget(entry.id)

    async def close(self, session_id: str, *, tenant: str | None = None) -> None:
        entry = self._owned(session_id, tenant)
        if entry is None:
            self._check_elsewhere(session_id)
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
