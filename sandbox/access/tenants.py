"""Tenants and access: who is calling (API key or client certificate), which policies it
may use, and whether it is within its rate and concurrency quotas.

API keys are stored as sha256 digests only: keys are long random tokens, so a fast hash
is enough and a leaked tenants file does not leak usable keys. A tenant may list several
digests at once, which is how a key is rotated: add the new one, move clients, remove the
old one, reload."""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import secrets
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandbox.errors import PolicyDenied, Throttled, Unauthenticated

# The tenant name every request gets when no tenants are configured (loopback only).
LOCAL_TENANT = "local"
KEY_PREFIX = "sbx_"
# A THROTTLED reply for the concurrency limit says to wait about this long.
CONCURRENCY_RETRY_MS = 100


def new_api_key() -> tuple[str, str]:
    """A fresh key and the digest to put in the tenants file."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key_digest(key)


def key_digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class Tenant(BaseModel):
    """One tenant, as written in the tenants file under [tenants.NAME]."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    # sha256 digests of its API keys ("sha256:<hex>"); several during a rotation.
    api_key_sha256: tuple[str, ...] = ()
    # Common names of the client certificates that identify it (mutual TLS).
    mtls_common_names: tuple[str, ...] = ()
    # Policies it may use, and the one used when a request names none.
    allowed_policies: frozenset[str] = frozenset({"default"})
    default_policy: str = "default"
    # Requests per second, sustained, and the burst allowed above that.
    rate_per_s: float = Field(default=20.0, gt=0)
    burst: int = Field(default=40, gt=0)
    # Executions running at once (each holds a Monty worker or a container slot).
    max_concurrent: int = Field(default=4, gt=0)
    # Sessions open at once, under all its policies together (each Monty session holds a
    # worker while open); 0: it opens none. A policy's sessions_per_tenant caps the same
    # count while the tenant opens a session under that policy. Default: 8.
    max_sessions: int = Field(default=8, ge=0)
    # Memory its open sessions may hold together: the sum of their limits.memory_bytes
    # (a session's sandbox keeps its memory while idle). Default: 1 GiB, four sessions of
    # the default policy.
    session_memory_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)

    @field_validator("api_key_sha256")
    @classmethod
    def _digests(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
                raise ValueError(
                    f"{value[:12]!r}...: expected 'sha256:' and 64 hex digits (the digest, "
                    "never the key; `sandbox tenant new-key` prints both)"
                )
        return values


class TenantsError(Exception):
    """The tenants file cannot be used; the message names the file and field."""


class TenantRegistry:
    def __init__(self, tenants: Sequence[Tenant]) -> None:
        self.tenants = {t.name: t for t in tenants}
        self._by_key: dict[str, Tenant] = {}
        self._by_cn: dict[str, Tenant] = {}
        for tenant in tenants:
            if tenant.default_policy not in tenant.allowed_policies:
                raise TenantsError(
                    f"tenants.{tenant.name}.default_policy: '{tenant.default_policy}' is not "
                    "among its allowed_policies"
                )
            for digest in tenant.api_key_sha256:
                if digest in self._by_key:
                    raise TenantsError(
                        f"tenants.{tenant.name}: an API key digest is shared "
                        f"with tenant {self._by_key[digest].name}"
                    )
                self._by_key[digest] = tenant
            for cn in tenant.mtls_common_names:
                self._by_cn[cn] = tenant

    def __len__(self) -> int:
        return len(self.tenants)

    @classmethod
    def load(cls, path: Path) -> TenantRegistry:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise TenantsError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise TenantsError(f"{path}: not valid TOML: {exc}") from None
        unknown = set(data) - {"tenants"}
        if unknown:
            raise TenantsError(f"{path}: unknown top-level keys {sorted(unknown)}")
        tenants = []
        for name, body in (data.get("tenants") or {}).items():
            try:
                tenants.append(Tenant.model_validate({"name": name, **body}))
            except ValidationError as exc:
                problems = "; ".join(
                    f"tenants.{name}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors()
                )
                raise TenantsError(f"{path}: {problems}") from None
        try:
            return cls(tenants)
        except TenantsError as exc:
            raise TenantsError(f"{path}: {exc}") from None

    def by_key(self, key: str) -> Tenant | None:
        return self._by_key.get(key_digest(key))

    def by_common_name(self, names: Sequence[str]) -> Tenant | None:
        for name in names:
            tenant = self._by_cn.get(name)
            if tenant is not None:
                return tenant
        return None


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    running: int = 0
    peak: int = 0


class SharedQuotas(Protocol):
    """Quotas kept where every replica sees them (durable/pg_quotas.py): a tenant's rate,
    burst and concurrency hold for the whole deployment. A slot is leased to the replica
    holding it, so a replica that dies gives its slots back when the lease lapses."""

    def acquire(self, tenant: str, quota: Tenant, *, token: bool = True) -> int:
        """Takes a rate token (unless `token` is False) and a concurrency slot; returns
        the slot. Raises Throttled (over_concurrency / over_rate) or Unavailable (the
        store does not answer)."""
        ...

    def take_token(self, tenant: str, quota: Tenant) -> None:
        """Takes a rate token alone (a batch's item), or raises as acquire() does."""
        ...

    def release(self, slot: int) -> None:
        """Gives the slot back; never raises (an unreachable store lets it lapse)."""
        ...


def over_concurrency(tenant: str, config: Tenant) -> Throttled:
    return Throttled(
        f"tenant '{tenant}' already runs its maximum of {config.max_concurrent} executions at once",
        retry_after_ms=CONCURRENCY_RETRY_MS,
        metadata={"quota": "max_concurrent", "limit_value": str(config.max_concurrent)},
    )


def over_rate(tenant: str, config: Tenant, tokens: float) -> Throttled:
    wait_ms = max(1, math.ceil((1.0 - tokens) / config.rate_per_s * 1000))
    return Throttled(
        f"tenant '{tenant}' is over its rate of {config.rate_per_s:g} requests/s "
        f"(burst {config.burst})",
        retry_after_ms=wait_ms,
        metadata={"quota": "rate_per_s", "limit_value": f"{config.rate_per_s:g}"},
    )


@dataclass
class Access:
    """Authentication, policy choice and quotas. With no tenants configured every caller
    is the tenant `local` (and the server is on loopback only)."""

    tenants: TenantRegistry | None = None
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    clock: Callable[[], float] = field(default=time.monotonic)
    # Several replicas: quotas in the shared store, not in this process.
    shared: SharedQuotas | None = None
    _slots: dict[str, list[int]] = field(default_factory=dict)

    @property
    def required(self) -> bool:
        return self.tenants is not None and len(self.tenants) > 0

    def authenticate(
        self, metadata: Iterable[tuple[str, str | bytes]] | None, common_names: Sequence[str]
    ) -> str:
        """The tenant's name. Raises UNAUTHENTICATED (kind INVALID_REQUEST)."""
        tenants = self.tenants
        if tenants is None or not tenants.tenants:
            return LOCAL_TENANT
        tenant = tenants.by_common_name(common_names) if common_names else None
        if tenant is not None:
            return tenant.name
        for key, value in metadata or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = text.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise Unauthenticated("authorization metadata must be 'Bearer <API key>'")
                tenant = tenants.by_key(token.strip())
                if tenant is None:
                    raise Unauthenticated("unknown or revoked API key")
                return tenant.name
        raise Unauthenticated(
            "this server requires an API key (authorization: Bearer <key>) or a client certificate"
        )

    def policy_for(self, tenant: str, requested: str, *, in_session: bool = False) -> str:
        """The policy name a request runs under: its own, or the tenant's default.
        Raises POLICY_VIOLATION when the tenant may not use it."""
        config = self._tenant(tenant)
        if config is None:
            return requested
        if not requested:
            return "" if in_session else config.default_policy
        if requested not in config.allowed_policies:
            raise PolicyDenied(
                f"tenant '{tenant}' may not use policy '{requested}' (allowed: "
                f"{', '.join(sorted(config.allowed_policies))})",
                field="policy",
            )
        return requested

    @contextlib.contextmanager
    def admit(self, tenant: str) -> Iterator[None]:
        """Holds one of the tenant's concurrency slots and one rate token, or raises
        THROTTLED with retry_after_ms."""
        self.acquire(tenant)
        try:
            yield
        finally:
            self.release(tenant)

    def acquire(self, tenant: str) -> None:
        """Takes a concurrency slot and a rate token; release() gives the slot back."""
        config = self._tenant(tenant)
        if config is None:
            return
        if self.shared is not None:
            self._slots.setdefault(tenant, []).append(self.shared.acquire(tenant, config))
            return
        bucket = self._bucket(tenant, config)
        if bucket.running >= config.max_concurrent:
            raise over_concurrency(tenant, config)
        if bucket.tokens < 1.0:
            raise over_rate(tenant, config, bucket.tokens)
        bucket.tokens -= 1.0
        bucket.running += 1
        bucket.peak = max(bucket.peak, bucket.running)

    def _bucket(self, tenant: str, config: Tenant) -> _Bucket:
        """The tenant's bucket in this process, its tokens refilled to now."""
        now = self._now()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(tokens=float(config.burst), stamp=now)
        refill = (now - bucket.stamp) * config.rate_per_s
        bucket.tokens = min(float(config.burst), bucket.tokens + refill)
        bucket.stamp = now
        return bucket

    def release(self, tenant: str, slots: int = 1) -> None:
        held = self._slots.get(tenant)
        if self.shared is not None and held:
            for _ in range(min(slots, len(held))):
                self.shared.release(held.pop())
            return
        bucket = self._buckets.get(tenant)
        if bucket is not None:
            bucket.running = max(0, bucket.running - slots)

    def reserve(self, tenant: str, wanted: int) -> int:
        """Takes up to `wanted` more concurrency slots, as many as the tenant has free
        (no rate token); returns how many it took, for release(tenant, slots=...). A batch
        holds its window this way: never more than the tenant's max_concurrent."""
        config = self._tenant(tenant)
        if config is None:
            return wanted
        if self.shared is not None:
            taken = 0
            while taken < wanted:
                try:
                    slot = self.shared.acquire(tenant, config, token=False)
                except Throttled:
                    break
                self._slots.setdefault(tenant, []).append(slot)
                taken += 1
            return taken
        bucket = self._bucket(tenant, config)
        taken = max(0, min(wanted, config.max_concurrent - bucket.running))
        bucket.running += taken
        bucket.peak = max(bucket.peak, bucket.running)
        return taken

    def take_token(self, tenant: str) -> None:
        """Takes one rate token without a concurrency slot (a batch's item, run in a slot
        its batch holds), or raises THROTTLED with retry_after_ms."""
        config = self._tenant(tenant)
        if config is None:
            return
        if self.shared is not None:
            self.shared.take_token(tenant, config)
            return
        bucket = self._bucket(tenant, config)
        if bucket.tokens < 1.0:
            raise over_rate(tenant, config, bucket.tokens)
        bucket.tokens -= 1.0

    def tenant(self, name: str) -> Tenant | None:
        """The tenant's entry in the tenants file (None without one: no quotas)."""
        return self._tenant(name)

    def peak_concurrency(self, tenant: str) -> int:
        bucket = self._buckets.get(tenant)
        return bucket.peak if bucket else 0

    def _tenant(self, name: str) -> Tenant | None:
        if self.tenants is None:
            return None
        return self.tenants.tenants.get(name)

    def _now(self) -> float:
        return self.clock()


def common_names(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """Client-certificate common names from a gRPC auth context (mutual TLS only)."""
    return [v.decode() for v in auth_context.get("x509_common_name", ())]
