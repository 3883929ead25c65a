"""Execution policies: what code may do and the most it may use.

The server ships one built-in policy, `default`; policy files (sandbox/policy_files.py)
add more or replace it. A request may ask for lower limits than its policy's, never
higher."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandbox.core.limits import LIMIT_FIELDS, EffectiveLimits, RequestedLimits
from sandbox.errors import NotFound, PolicyDenied
from sandbox_client.protocol.convert import NO_LIMITS_ASKED
from sandbox_client.protocol.models import Backend

MiB = 1024 * 1024
GiB = 1024 * MiB

# "Every tenant whose own allowed_policies lists this policy".
ANY_TENANT = "*"


class Mount(BaseModel):
    """A host directory shown to Monty code (tool runs see none). Containers never see
    host directories."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host_path: str
    guest_path: str
    # Read-only unless stated otherwise.
    mode: Literal["ro", "rw"] = "ro"


class Policy(BaseModel):
    """One policy. Every field's default is the safe choice."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    # Backends code may run on. Default: both; AUTO means "Monty, then a container".
    backends: frozenset[Backend] = frozenset({Backend.AUTO, Backend.MONTY, Backend.CONTAINER})
    # Whether AUTO may re-run code Monty cannot run in a container. Default: yes.
    allow_fallback: bool = True
    # Whether code using a construct Monty is known to answer differently from CPython
    # (sandbox/backends/monty/divergence.py) goes straight to a container under AUTO
    # (when it may fall back), and Monty's answers to it carry `fidelity_warning`.
    # Default: yes (off, Monty may give a wrong answer that nobody sees).
    fidelity_routing: bool = True
    # The share of AUTO's successful Monty runs re-run in a container off the request
    # path, their stdout and value compared (sandbox/core/shadow.py; needs the container
    # backend). Default: 0, off (each sample costs a container run).
    shadow_sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
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
    network: Literal["none"] = "none"
    # Monty's OS access. Only "none" (the default) exists: no files beyond `mounts`, no
    # environment variables, no processes. The clock is not withheld: code reads the
    # host's time in UTC (time.time, datetime.now; the monotonic clocks read the same
    # clock; the host's zone is not shown), time.process_time reads 0, and sleeps wait
    # for real, charged to wall_time_ms. (pydantic-monty could freeze or deny the clock;
    # frozen time hangs deadline loops and denied time breaks ordinary date code, for no
    # secret kept: a container reads its clock anyway.)
    os_access: Literal["none"] = "none"
    # Host directories visible to Monty code. Default: none.
    mounts: tuple[Mount, ...] = ()
    # Container image; "" means the server's setting (`[container] image`).
    container_image: str = ""
    # Container OCI runtime: runc, or gVisor's runsc; "" means the server's setting.
    container_runtime: Literal["", "runc", "runsc"] = ""
    # The runner's seccomp filter. Only "default" exists: no sockets but AF_UNIX, no new
    # namespaces, no ptrace, no kernel keyring, mount, bpf or module calls.
    seccomp: Literal["default"] = "default"
    # CPU time the static checks (denied imports, escape routes) may take on one source
    # (and three times that in wall time); code that takes longer is refused as too
    # complex to check. Default: 2 s (235 KB of the standard library's own code takes
    # 0.15-0.3 s, measured on a loaded 2-core machine).
    static_check_ms: int = Field(default=2_000, gt=0)
    # The longest a tool run waits for the client's answer to one tool call; then the
    # call raises TimeoutError in the code (and later calls of that run raise it at once:
    # the client has stopped answering). Default: 60 s.
    tool_wait_ms: int = Field(default=60_000, gt=0)
    # Sessions (state kept across calls): the most a tenant may hold open at once, in all
    # its policies together, while it opens one under this policy (0: this policy opens
    # none). Default: 10.
    sessions_per_tenant: int = Field(default=10, ge=0)
    # Tenants that may use this policy; "*" means any tenant whose own allowed_policies
    # lists it. Both lists must allow a tenant. Default: "*".
    tenants: frozenset[str] = frozenset({ANY_TENANT})
    # What the audit log keeps of the code: "full" source, or its "digest" only.
    audit_code: Literal["full", "digest"] = "full"

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_." for c in value):
            raise ValueError("a policy name is letters, digits, '-', '_' or '.'")
        return value

    def allows_tenant(self, tenant: str) -> bool:
        return ANY_TENANT in self.tenants or tenant in self.tenants

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the canonical form: sorted keys, no whitespace, sets sorted."""
        data = self.model_dump(mode="json")
        for key, value in data.items():
            if isinstance(value, list):
                data[key] = sorted(value, key=lambda v: json.dumps(v, sort_keys=True))
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    @functools.cached_property
    def default_limits(self) -> EffectiveLimits:
        """The limits of a request that asks for none: the policy's own."""
        return EffectiveLimits(**{name: getattr(self, name) for name in LIMIT_FIELDS})

    def limits(self, requested: RequestedLimits | None = None) -> EffectiveLimits:
        """The effective limits for a request. Raises POLICY_VIOLATION naming the first
        field that asks for more than this policy allows."""
        if requested is None or requested == NO_LIMITS_ASKED:
            return self.default_limits
        values: dict[str, int] = {}
        for name in LIMIT_FIELDS:
            ceiling: int = getattr(self, name)
            asked = getattr(requested, name)
            if asked is not None and asked > ceiling:
                raise PolicyDenied(
                    f"limits.{name}={asked} exceeds policy '{self.name}' maximum {ceiling}",
                    field=f"limits.{name}",
                    metadata={"limit": name, "limit_value": str(ceiling)},
                )
            values[name] = ceiling if asked is None else asked
        return EffectiveLimits(**values)


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

    def names(self) -> list[str]:
        return sorted(self._policies)

    def get(self, name: str) -> Policy:
        policy = self._policies.get(name or self.default)
        if policy is None:
            raise NotFound(f"unknown policy {name!r}", field="policy")
        return policy


class ServerMaximums(BaseModel):
    """The most any policy on this server may grant; a policy file above one is refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wall_time_ms: int = Field(default=300_000, gt=0)
    memory_bytes: int = Field(default=4 * GiB, gt=0)
    output_bytes: int = Field(default=64 * MiB, gt=0)
    max_recursion_depth: int = Field(default=10_000, gt=0)
    cpu_millis: int = Field(default=4_000, gt=0)
    pids: int = Field(default=1_024, gt=0)
    disk_bytes: int = Field(default=4 * GiB, gt=0)
    code_bytes: int = Field(default=4 * MiB, gt=0)
    inputs_bytes: int = Field(default=64 * MiB, gt=0)
    sessions_per_tenant: int = Field(default=100, ge=0)
    static_check_ms: int = Field(default=30_000, gt=0)
    tool_wait_ms: int = Field(default=3_600_000, gt=0)

    def exceeded(self, policy: Policy) -> list[tuple[str, int, int]]:
        """(field, policy value, maximum) for every field above its maximum."""
        over = []
        for name in type(self).model_fields:
            value, cap = getattr(policy, name), getattr(self, name)
            if value > cap:
                over.append((name, value, cap))
        return over
