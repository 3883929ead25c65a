"""The limits one Monty session is checked out with, sealed so that a limit error is
recognisably Monty's own and never the code's.

pydantic-monty raises its resource limits (memory, feed time, total sleep) as a plain
MemoryError or TimeoutError inside MontyRuntimeError, with nothing to tell them from the
code's own `raise MemoryError(...)`: no flag, no distinct class (the worker's uncatchable
exception is flattened on the way out). What the worker does add is the limit itself,
exactly, in its message ("memory limit exceeded: 16000043056 bytes > 67096519 bytes",
"feed time limit exceeded: 1.000146611s > 1.000123s", "sleep limit exceeded: 3600s >
499.877ms"). So each checkout lowers the policy's limits by a random amount the code is
never told (a fraction of a percent: at most 1/256 of the limit, at most 1 MiB or 50 ms)
and a limit error counts only when it names those exact values. Code that writes the
message itself has to guess the seal, one guess per run."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

import pydantic_monty as pm

from sandbox.core.limits import EffectiveLimits

_MAX_MEMORY_SEAL = 1 << 20  # bytes
_MAX_TIME_SEAL_US = 50_000

_MEMORY_LIMIT = re.compile(r"memory limit exceeded: \d+ bytes > (\d+) bytes")
_TIME_LIMIT = re.compile(r"(?:feed |turn )?time limit exceeded: \S+ > (\S+)")
_SLEEP_LIMIT = re.compile(r"sleep limit exceeded: \S+ > (\S+)")
# Rust's Debug rendering of a Duration, which the worker's messages use.
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(s|ms|µs|us|ns)")
_UNIT_US = {"s": 1e6, "ms": 1e3, "µs": 1.0, "us": 1.0, "ns": 1e-3}


def _seal(limit: int, cap: int) -> int:
    """A random amount, 1 to min(limit/256, cap), to take off `limit`."""
    return 1 + secrets.randbelow(max(1, min(limit // 256, cap)))


@dataclass(frozen=True)
class SealedLimits:
    """What the worker enforces for a session with the policy's `limits`."""

    memory_bytes: int
    feed_us: int
    sleep_us: int
    max_recursion_depth: int

    @classmethod
    def of(cls, limits: EffectiveLimits) -> SealedLimits:
        wall_us = limits.wall_time_ms * 1000
        return cls(
            memory_bytes=max(1, limits.memory_bytes - _seal(limits.memory_bytes, _MAX_MEMORY_SEAL)),
            feed_us=max(1, wall_us - _seal(wall_us, _MAX_TIME_SEAL_US)),
            sleep_us=max(1, wall_us - _seal(wall_us, _MAX_TIME_SEAL_US)),
            max_recursion_depth=limits.max_recursion_depth,
        )

    def resource_limits(self) -> pm.ResourceLimits:
        return {
            "max_feed_duration_secs": self.feed_us / 1e6,
            "max_total_sleep_secs": self.sleep_us / 1e6,
            "max_memory": self.memory_bytes,
            "max_recursion_depth": self.max_recursion_depth,
        }

    def is_memory_limit(self, message: str) -> bool:
        match = _MEMORY_LIMIT.fullmatch(message)
        return match is not None and int(match.group(1)) == self.memory_bytes

    def is_time_limit(self, message: str) -> bool:
        match = _TIME_LIMIT.fullmatch(message)
        return match is not None and _microseconds(match.group(1)) == self.feed_us

    def is_sleep_limit(self, message: str) -> bool:
        match = _SLEEP_LIMIT.fullmatch(message)
        return match is not None and _microseconds(match.group(1)) == self.sleep_us


def _microseconds(rendered: str) -> int | None:
    match = _DURATION.fullmatch(rendered)
    if match is None:
        return None
    return round(float(match.group(1)) * _UNIT_US[match.group(2)])


@dataclass(frozen=True, eq=False)
class SealedSession:
    """A checked-out Monty session and the sealed limits it enforces."""

    session: pm.AsyncMontySession
    sealed: SealedLimits
