"""Execution policies: what code may do and the most it may use.

Until policy files land, the server ships one built-in policy, `default`. A request may
ask for lower limits than its policy's, never higher."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import fields

from pydantic import BaseModel, ConfigDict, Field

from sandbox_client import Backend, FailureKind

from .errors import RequestError, invalid
from .limits import Limits, RequestedLimits

MiB = 1024 * 1024


class Policy(BaseModel):
    """One policy. Every field's default is the safe choice."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    # Backends code may run on. Default: both; AUTO means "Monty, then a container".
    backends: frozenset[Backend] = frozenset({Backend.AUTO, Backend.MONTY, Backend.CONTAINER})
    # Whether AUTO may re-run code Monty cannot run in a container. Default: yes.
    allow_fallback: bool = True
    # Wall-clock budget per execution. Default: 10 s.
    wall_time_ms: int = Field(default=10_000, gt=0)
    # Heap (Monty) or memory+swap (container). Default: 256 MiB.
    memory_bytes: int = Field(default=256 * MiB, gt=0)
    # stdout + stderr together; output past it is truncated and the run fails. Default: 1 MiB.
    output_bytes: int = Field(default=1 * MiB, gt=0)
    # Monty call depth. Default: 200 (Monty's own default is 1000).
    max_recursion_depth: int = Field(default=200, gt=0)
    # Container CPU, in thousandths of a core. Default: one core.
    cpu_millis: int = Field(default=1000, gt=0)
    # Container processes and threads. Default: 64 (a fork bomb stops there).
    pids: int = Field(default=64, gt=0)
    # Container tmpfs for /tmp and the work dir. Default: 64 MiB.
    disk_bytes: int = Field(default=64 * MiB, gt=0)
    # Largest accepted source, in UTF-8 bytes. Default: 256 KiB.
    code_bytes: int = Field(default=256 * 1024, gt=0)
    # Largest accepted inputs_json + stdin, in bytes. Default: 1 MiB.
    inputs_bytes: int = Field(default=1 * MiB, gt=0)
    # Modules code may not import, on any backend. Default: those that reach around the
    # interpreter itself (raw memory, raw syscalls, the import machinery). The sandbox holds
    # regardless; this makes the intent reviewable and names the attempt POLICY_VIOLATION.
    # Network and subprocess modules are not listed: Monty lacks them (UNSUPPORTED), and a
    # container has no network and its runner reports the attempt itself.
    denied_imports: frozenset[str] = frozenset(
        {"_posixsubprocess", "builtins", "ctypes", "importlib", "nt", "posix"}
    )
    # Further modules denied in Monty only. Default: os (in Monty it offers nothing but
    # environment and filesystem access, both denied), still allowed in a container.
    monty_denied_imports: frozenset[str] = frozenset({"os"})
    # Network access from code. Only "none" exists: no sandbox ever gets a network.
    network: str = Field(default="none", pattern="^none$")

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the canonical form: sorted keys, no whitespace, sets sorted."""
        data = self.model_dump(mode="json")
        for key, value in data.items():
            if isinstance(value, list):
                data[key] = sorted(value)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    def limits(self, requested: RequestedLimits | None = None) -> Limits:
        """The effective limits for a request. Raises POLICY_VIOLATION naming the first
        field that asks for more than this policy allows."""
        values: dict[str, int] = {}
        for f in fields(Limits):
            ceiling: int = getattr(self, f.name)
            asked = getattr(requested, f.name) if requested is not None else None
            if asked is not None and asked > ceiling:
                raise RequestError(
                    FailureKind.POLICY_VIOLATION,
                    f"limits.{f.name}={asked} exceeds policy '{self.name}' maximum {ceiling}",
                    field=f"limits.{f.name}",
                )
            values[f.name] = ceiling if asked is None else asked
        return Limits(**values)


DEFAULT_POLICY = Policy(name="default")


class PolicyRegistry:
    """The policies a server knows, by name, with one default."""

    def __init__(self, policies: Mapping[str, Policy], default: str) -> None:
        if default not in policies:
            raise ValueError(f"default policy {default!r} is not among {sorted(policies)}")
        self._policies = dict(policies)
        self.default = default

    @classmethod
    def builtin(cls) -> PolicyRegistry:
        return cls({DEFAULT_POLICY.name: DEFAULT_POLICY}, DEFAULT_POLICY.name)

    def get(self, name: str) -> Policy:
        policy = self._policies.get(name or self.default)
        if policy is None:
            raise invalid(f"unknown policy {name!r}", field="policy", not_found=True)
        return policy
