"""What reviewers read: a policy's effective form (`show`), what one policy permits that
another does not (`diff`), and a plain-English summary (`explain`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.policy.files import Problem, load_policy_dir, load_policy_file
from sandbox.policy.model import ANY_TENANT, Policy, ServerMaximums
from sandbox_client import Backend

# Numeric fields where a larger value permits more, with the unit a reader sees.
_AMOUNTS: dict[str, str] = {
    "wall_time_ms": "ms",
    "memory_bytes": "bytes",
    "output_bytes": "bytes",
    "max_recursion_depth": "frames",
    "cpu_millis": "thousandths of a core",
    "pids": "processes",
    "disk_bytes": "bytes",
    "code_bytes": "bytes",
    "inputs_bytes": "bytes",
    "sessions_per_tenant": "sessions",
    "static_check_ms": "ms",
    "tool_wait_ms": "ms",
}


class ReviewError(Exception):
    """The policy cannot be found or does not load; the message says why."""


def find_policy(
    name: str, policy_dir: Path | None, maximums: ServerMaximums | None = None
) -> Policy:
    """A policy by file path, or by name among the server's (built-in and `[policies] dir`)."""
    path = Path(name)
    if name.endswith(".toml") or path.is_file():
        result = load_policy_file(path, maximums)
        if result.policy is None:
            raise ReviewError("\n".join(str(p) for p in result.errors))
        return result.policy
    policies, problems = load_policy_dir(policy_dir, maximums)
    policy = policies.get(name)
    if policy is None:
        broken = [str(p) for p in problems if p.severity == "error" and Path(p.file).stem == name]
        hint = ("; it has errors:\n" + "\n".join(broken)) if broken else ""
        raise ReviewError(f"no policy named '{name}' (known: {', '.join(sorted(policies))}){hint}")
    return policy


def show(policy: Policy) -> str:
    """The effective policy, every default filled in, as a policy file, and its digest."""
    data = policy.model_dump(mode="json")
    lines = [f"# digest {policy.digest}"]
    mounts = data.pop("mounts")
    for key, value in data.items():
        if isinstance(value, list):
            value = sorted(value)
        lines.append(f"{key} = {_toml(value)}")
    for mount in mounts:
        lines += ["", "[[mounts]]"] + [f"{k} = {_toml(v)}" for k, v in mount.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:_}" if value >= 10_000 else str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


@dataclass(frozen=True)
class Difference:
    field: str
    text: str


def permits_more(a: Policy, b: Policy) -> list[Difference]:
    """What `a` permits that `b` does not."""
    out: list[Difference] = []
    for field, unit in _AMOUNTS.items():
        va, vb = getattr(a, field), getattr(b, field)
        if va > vb:
            out.append(Difference(field, f"{field} up to {va:,} {unit} (not only {vb:,})"))
    for backend in sorted(a.backends - b.backends, key=lambda x: x.value):
        out.append(Difference("backends", f"runs on the {backend.value} backend"))
    if a.allow_fallback and not b.allow_fallback:
        out.append(Difference("allow_fallback", "falls back from Monty to a container"))
    for field in ("denied_imports", "monty_denied_imports"):
        allowed: frozenset[str] = getattr(b, field) - getattr(a, field)
        where = " in Monty" if field.startswith("monty") else ""
        for module in sorted(allowed):
            out.append(Difference(field, f"imports {module}{where}"))
    b_mounts = {(m.host_path, m.guest_path): m.mode for m in b.mounts}
    for m in a.mounts:
        other = b_mounts.get((m.host_path, m.guest_path))
        if other is None or (m.mode == "rw" and other == "ro"):
            out.append(Difference("mounts", f"sees {m.host_path} at {m.guest_path} ({m.mode})"))
    if ANY_TENANT in a.tenants and ANY_TENANT not in b.tenants:
        out.append(Difference("tenants", "is open to any tenant that lists it"))
    elif ANY_TENANT not in b.tenants:
        for tenant in sorted(a.tenants - b.tenants):
            out.append(Difference("tenants", f"is open to tenant {tenant}"))
    if a.audit_code == "digest" and b.audit_code == "full":
        out.append(Difference("audit_code", "keeps only the code's digest in the audit log"))
    return out


def changed(a: Policy, b: Policy) -> list[Difference]:
    """Fields that differ without one side being plainly more permissive."""
    out = []
    for field in ("container_image", "container_runtime", "seccomp", "os_access", "network"):
        va, vb = getattr(a, field), getattr(b, field)
        if va != vb:
            out.append(
                Difference(
                    field, f"{field}: {va or '(server default)'!s} vs {vb or '(server default)'!s}"
                )
            )
    return out


def diff(a: Policy, b: Policy) -> tuple[str, bool]:
    """The report, and whether the two policies permit the same things."""
    lines = [f"--- {a.name} {a.digest}", f"+++ {b.name} {b.digest}"]
    more_a, more_b, other = permits_more(a, b), permits_more(b, a), changed(a, b)
    lines.append(f"{a.name} permits, {b.name} does not:")
    lines += [f"  - {d.text}" for d in more_a] or ["  (nothing)"]
    lines.append(f"{b.name} permits, {a.name} does not:")
    lines += [f"  + {d.text}" for d in more_b] or ["  (nothing)"]
    if other:
        lines.append("differ otherwise:")
        lines += [f"  ~ {d.text}" for d in other]
    return "\n".join(lines) + "\n", not (more_a or more_b or other)


def _size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % (size // 4) == 0:
            return f"{n / size:g} {unit}"
    return f"{n:,} bytes"


def explain(policy: Policy) -> str:
    """A plain-English summary of what code under `policy` may do."""
    p = policy
    backends = sorted(b.value for b in p.backends)
    lines = [f"Policy '{p.name}' ({p.digest})", ""]
    where = []
    if Backend.MONTY in p.backends or Backend.AUTO in p.backends:
        where.append(
            "in the Monty interpreter (a Python subset with no file, network, environment "
            "or process access; it reads the clock, in UTC)"
        )
    if Backend.CONTAINER in p.backends:
        image = p.container_image or "the server's default image"
        runtime = {
            "": "the server's default runtime",
            "runc": "runc",
            "runsc": "gVisor (runsc, a user-space kernel)",
        }[p.container_runtime]
        where.append(
            f"in a Docker container ({image}, {runtime}) with no network, a "
            f"read-only root, a non-root user and the runner's seccomp filter"
        )
    lines.append(
        f"Code may run {' or '.join(where) if where else 'nowhere'} "
        f"(backends: {', '.join(backends) or 'none'})."
    )
    if Backend.AUTO in p.backends:
        lines.append(
            "Requests for 'auto' run in Monty first; "
            + (
                "code Monty cannot run is re-run in a container."
                if p.allow_fallback and Backend.CONTAINER in p.backends
                else "they never fall back to a container."
            )
        )
    lines.append("It has no network access at all.")
    lines.append(
        f"Each execution gets at most {p.wall_time_ms / 1000:g} s of wall time, "
        f"{_size(p.memory_bytes)} of memory and {_size(p.output_bytes)} of output; "
        f"Monty calls nest at most {p.max_recursion_depth} deep."
    )
    if Backend.CONTAINER in p.backends:
        lines.append(
            f"In a container: {p.cpu_millis / 1000:g} CPU core(s), at most {p.pids} processes "
            f"and threads, and {_size(p.disk_bytes)} of scratch disk (/tmp and the work "
            "directory, in memory); nothing else is writable."
        )
    lines.append(
        f"Code may be at most {_size(p.code_bytes)}; inputs and stdin together at "
        f"most {_size(p.inputs_bytes)}; its static checks may take {p.static_check_ms / 1000:g} "
        "s, after which it is refused as too complex to check."
    )
    lines.append(
        f"A tool call waits at most {p.tool_wait_ms / 1000:g} s for its answer, then raises "
        "TimeoutError in the code."
    )
    lines.append(
        f"It may not import: {', '.join(sorted(p.denied_imports))}"
        + (
            f"; in Monty also {', '.join(sorted(p.monty_denied_imports))}"
            if p.monty_denied_imports
            else ""
        )
        + "."
    )
    if p.mounts:
        for m in p.mounts:
            lines.append(
                f"Declares {m.host_path} visible at {m.guest_path} "
                f"({'read-write' if m.mode == 'rw' else 'read-only'}) to "
                "Monty runs and sessions; tool runs and containers see none."
            )
    else:
        lines.append("It sees no host files.")
    lines.append(
        f"Sessions: a tenant opens one only while it holds fewer than "
        f"{p.sessions_per_tenant}, under all its policies together."
        if p.sessions_per_tenant
        else "Sessions are not allowed."
    )
    who = (
        "any tenant that lists it among its allowed policies"
        if ANY_TENANT in p.tenants
        else "tenants " + ", ".join(sorted(p.tenants))
    )
    lines.append(f"Usable by {who}.")
    lines.append(
        "The audit log keeps "
        + (
            "the full source of every execution."
            if p.audit_code == "full"
            else "only a digest of the code, not the code."
        )
    )
    return "\n".join(lines) + "\n"


def format_problems(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)
