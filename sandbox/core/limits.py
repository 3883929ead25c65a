"""Resource limits: what a request asks for, and what a backend is given."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, kw_only=True)
class RequestedLimits:
    """Limits a request asks for; None means "the policy's value"."""

    wall_time_ms: int | None = None
    memory_bytes: int | None = None
    output_bytes: int | None = None
    max_recursion_depth: int | None = None
    cpu_millis: int | None = None
    pids: int | None = None
    disk_bytes: int | None = None


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Effective, policy-clamped limits handed to a backend. Every field is set."""

    wall_time_ms: int
    memory_bytes: int
    output_bytes: int
    max_recursion_depth: int
    cpu_millis: int
    pids: int
    disk_bytes: int

    @property
    def wall_time_s(self) -> float:
        return self.wall_time_ms / 1000


NO_REQUESTED_LIMITS = RequestedLimits()
LIMIT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Limits))
