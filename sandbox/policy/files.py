"""Policy files: one TOML file per policy, validated into `Policy` with problems that name
the file, the line and the field. Used by the server (load, reload) and by reviewers
(`sandbox policy lint`)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import ValidationError

from sandbox.backends.container.minimums import CONTAINER_MINIMUMS, below_container_minimums
from sandbox.policy.model import DEFAULT_POLICY, Policy, ServerMaximums
from sandbox_client import Backend

Severity = Literal["error", "warning"]

# Host paths a read-write mount must never expose (or contain: "/" contains them all).
SYSTEM_PATHS = tuple(
    PurePosixPath(p)
    for p in (
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/usr",
        "/var",
    )
)
# Modules whose absence from denied_imports a reviewer should see.
ESCAPE_MODULES = frozenset({"ctypes", "importlib", "_posixsubprocess"})


@dataclass(frozen=True, kw_only=True)
class Problem:
    file: str
    line: int  # 1-based; 0 when the problem concerns the whole file
    field: str  # dotted, as in the file: "mounts.0.mode"; "" for the whole file
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        what = f"{self.field}: " if self.field else ""
        tag = "" if self.severity == "error" else "warning: "
        return f"{where}: {tag}{what}{self.message}"


@dataclass(frozen=True)
class LoadResult:
    policy: Policy | None
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def load_policy_file(path: Path, maximums: ServerMaximums | None = None) -> LoadResult:
    """Reads and checks one policy file. `policy` is None when it has any error."""
    maximums = maximums or ServerMaximums()
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = Problem(file=name, line=0, field="", message=f"cannot read: {exc}")
        return LoadResult(None, [problem])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        line = int(match.group(1)) if match else 0
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        return LoadResult(
            None, [Problem(file=name, line=line, field="", message=f"not valid TOML: {message}")]
        )
    lines = _key_lines(text)
    data.setdefault("name", path.stem)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = [
            Problem(
                file=name,
                line=_locate(lines, err["loc"]),
                field=".".join(str(p) for p in err["loc"]),
                message=_message(err),
            )
            for err in exc.errors()
        ]
        # The checks beyond types, on the keys that are well typed, so one lint shows
        # every problem rather than the rest only once the type errors are fixed.
        wrong = {err["loc"][0] for err in exc.errors() if err["loc"]}
        problems += _checked_without(data, wrong, maximums, name, lines, path.stem)
        return LoadResult(None, sorted(problems, key=lambda p: p.line))
    problems = check_policy(policy, maximums, file=name, lines=lines, stem=path.stem)
    ok = not any(p.severity == "error" for p in problems)
    return LoadResult(policy if ok else None, sorted(problems, key=lambda p: p.line))


def _checked_without(
    data: dict[str, Any],
    wrong: set[str | int],
    maximums: ServerMaximums,
    name: str,
    lines: Mapping[tuple[str | int, ...], int],
    stem: str,
) -> list[Problem]:
    """check_policy's problems for the policy `data` makes without its `wrong` keys
    (their defaults in their place); none when even that does not validate."""
    try:
        partial = Policy.model_validate({k: v for k, v in data.items() if k not in wrong})
    except ValidationError:
        return []
    found = check_policy(partial, maximums, file=name, lines=lines, stem=stem)
    return [p for p in found if p.field.split(".")[0] not in wrong]


def check_policy(
    policy: Policy,
    maximums: ServerMaximums,
    *,
    file: str = "",
    lines: Mapping[tuple[str | int, ...], int] | None = None,
    stem: str = "",
) -> list[Problem]:
    """The checks beyond types: server maximums and unsafe or incoherent combinations."""
    lines = lines or {}
    out: list[Problem] = []

    def add(field: tuple[str | int, ...], message: str, severity: Severity = "error") -> None:
        out.append(
            Problem(
                file=file,
                line=_locate(lines, field),
                field=".".join(str(p) for p in field),
                message=message,
                severity=severity,
            )
        )

    if stem and policy.name != stem:
        add(("name",), f"'{policy.name}' differs from the file name '{stem}.toml'")
    for field, value, cap in maximums.exceeded(policy):
        add((field,), f"{value} is above the server maximum {cap}")
    if not policy.backends:
        add(("backends",), "no backend is allowed: nothing could run")
    if Backend.AUTO in policy.backends and Backend.MONTY not in policy.backends:
        add(("backends",), "'auto' runs Monty first: allow 'monty' too, or drop 'auto'")
    if policy.allow_fallback and Backend.CONTAINER not in policy.backends and policy.backends:
        add(("allow_fallback",), "has no effect without the container backend", "warning")
    if Backend.CONTAINER not in policy.backends:
        for field in ("container_image", "container_runtime"):
            if getattr(policy, field):
                add((field,), "has no effect without the container backend", "warning")
    else:
        limits = {name: getattr(policy, name) for name in CONTAINER_MINIMUMS}
        for field, value, minimum in below_container_minimums(limits):
            add(
                (field,),
                f"{value} is below the container backend's minimum {minimum.value}: {minimum.why}",
            )
    if not policy.tenants:
        add(("tenants",), "empty: no tenant could use this policy")
    missing = sorted(ESCAPE_MODULES - policy.denied_imports)
    if missing:
        add(
            ("denied_imports",),
            f"does not deny {', '.join(missing)}: code may reach around the interpreter "
            "(the sandbox still holds, but the attempt is no longer named POLICY_VIOLATION)",
            "warning",
        )
    for i, mount in enumerate(policy.mounts):
        host, guest = PurePosixPath(mount.host_path), PurePosixPath(mount.guest_path)
        if not host.is_absolute() or ".." in host.parts:
            add(("mounts", i, "host_path"), f"'{mount.host_path}' must be absolute, without '..'")
            continue
        if not guest.is_absolute() or ".." in guest.parts:
            add(("mounts", i, "guest_path"), f"'{mount.guest_path}' must be absolute, without '..'")
        if mount.mode == "rw" and _touches_system_path(host):
            add(
                ("mounts", i, "mode"),
                f"read-write mount of the host system path '{mount.host_path}'",
            )
    if policy.mounts:
        add(
            ("mounts",),
            "applied to Monty runs and sessions only: tool runs and containers see no host files",
            "warning",
        )
    return out


def lint_files(paths: Sequence[Path], maximums: ServerMaximums | None = None) -> list[Problem]:
    """Every problem in `paths` (files, or directories of *.toml), duplicates included."""
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    for path in expand(paths):
        result = load_policy_file(path, maximums)
        problems += result.problems
        policy = result.policy
        if policy is None:
            continue
        if policy.name in seen:
            problems.append(
                Problem(
                    file=str(path),
                    line=_locate(_key_lines(path.read_text()), ("name",)),
                    field="name",
                    message=f"policy '{policy.name}' is also defined in {seen[policy.name]}",
                )
            )
        seen[policy.name] = path
    return problems


def expand(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        out += sorted(path.glob("*.toml")) if path.is_dir() else [path]
    return out


def load_policy_dir(
    directory: Path | None, maximums: ServerMaximums | None = None
) -> tuple[dict[str, Policy], list[Problem]]:
    """The built-in `default` policy plus every valid file in `directory` (a file named
    default.toml replaces the built-in one). Files with errors are left out."""
    policies: dict[str, Policy] = {DEFAULT_POLICY.name: DEFAULT_POLICY}
    if directory is None:
        return policies, []
    if not directory.is_dir():
        return policies, [Problem(file=str(directory), line=0, field="", message="not a directory")]
    problems = lint_files([directory], maximums)
    bad_files = {p.file for p in problems if p.severity == "error"}
    for path in expand([directory]):
        if str(path) in bad_files:
            continue
        result = load_policy_file(path, maximums)
        if result.policy is not None:
            policies[result.policy.name] = result.policy
    return policies, problems


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    message = str(err["msg"])
    return (
        f"{message} (got {err['input']!r})"
        if "input" in err and not isinstance(err["input"], dict | list)
        else message
    )


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\.\"' ]+?)\s*=")


def _split_key(key: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in key.split("."))


def _key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Where each key is set: (table path + key) -> 1-based line. tomllib keeps no
    positions, so this reads the lines; it understands tables, arrays of tables and
    dotted keys, which is all a policy file needs."""
    lines: dict[tuple[str | int, ...], int] = {}
    table: tuple[str | int, ...] = ()
    counts: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            path = _split_key(header.group(2))
            if header.group(1) == "[[":
                index = counts.get(path, 0)
                counts[path] = index + 1
                table = (*path, index)
                lines.setdefault(path, number)
            else:
                table = path
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            lines.setdefault((*table, *_split_key(key.group(1))), number)
    return lines


def _locate(lines: Mapping[tuple[str | int, ...], int], loc: Sequence[str | int]) -> int:
    """The line of the longest known prefix of `loc`; 0 if none is known."""
    for end in range(len(loc), 0, -1):
        line = lines.get(tuple(loc[:end]))
        if line is not None:
            return line
    return 0


def _touches_system_path(host: PurePosixPath) -> bool:
    return any(host == p or host in p.parents or p in host.parents for p in SYSTEM_PATHS)
