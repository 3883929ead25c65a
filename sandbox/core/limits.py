"""The limits a backend is given: every field set, already clamped by the policy.

What a request asks for is `sandbox_client.protocol.models.Limits` (None: the policy's value);
the field names are that model's `LIMIT_FIELDS`, and a test pins this type, the proto's
Limits message and the policy's fields to them."""

from __future__ import annotations

from dataclasses import dataclass

from sandbox_client.protocol.models import LIMIT_FIELDS
from sandbox_client.protocol.models import Limits as RequestedLimits

__all__ = ["LIMIT_FIELDS", "EffectiveLimits", "RequestedLimits"]


@dataclass(frozen=True, kw_only=True)
class EffectiveLimits:
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
