"""Policies and tenants, loaded at start and reloaded on SIGHUP or when their files change.

A reload builds complete new registries and swaps them in one assignment each: running
executions keep the Policy object they started with, so nothing in flight is dropped. A
broken file keeps the last good version and the log says why."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

import structlog

from sandbox.access.tenants import Access, TenantRegistry, TenantsError
from sandbox.config import PolicySettings, TenantSettings
from sandbox.errors import ConfigError
from sandbox.metrics import Metrics
from sandbox.policy.files import Problem, load_policy_dir
from sandbox.policy.model import PolicyRegistry

log = structlog.get_logger("sandbox.reload")


def load_policies(settings: PolicySettings) -> tuple[PolicyRegistry, list[Problem]]:
    """The server's policies. Raises ConfigError when the default policy is missing."""
    policies, problems = load_policy_dir(settings.dir, settings.maximums)
    try:
        return PolicyRegistry(policies, settings.default), problems
    except ValueError as exc:
        raise ConfigError(f"policies.default: {exc}") from None


def load_tenants(settings: TenantSettings, policies: PolicyRegistry) -> TenantRegistry | None:
    """The configured tenants, or None. Raises ConfigError (file and field named)."""
    if settings.file is None:
        return None
    try:
        tenants = TenantRegistry.load(settings.file)
    except TenantsError as exc:
        raise ConfigError(str(exc)) from None
    known = set(policies.names())
    for tenant in tenants.tenants.values():
        unknown = sorted(tenant.allowed_policies - known)
        if unknown:
            # Not fatal: the policy file may be broken right now and come back.
            log.warning("tenant allows unknown policies", tenant=tenant.name, policies=unknown)
    return tenants


def _fingerprint(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        out.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(out)


class Holder(Protocol):
    """What a reload replaces (the executor): the policies, and the tenants it checks."""

    policies: PolicyRegistry
    access: Access


class Reloader:
    def __init__(
        self,
        policies: PolicySettings,
        tenants: TenantSettings,
        *,
        holder: Holder,
        metrics: Metrics | None = None,
    ) -> None:
        self.policies = policies
        self.tenants = tenants
        self.holder = holder
        self.metrics = metrics
        self._seen = self._watched()

    def _files(self) -> list[Path]:
        files: list[Path] = []
        directory = self.policies.dir
        if directory is not None and directory.is_dir():
            files += sorted(directory.glob("*.toml"))
            files.append(directory)
        if self.tenants.file is not None:
            files.append(self.tenants.file)
        return files

    def _watched(self) -> tuple[tuple[str, int, int], ...]:
        return _fingerprint(self._files())

    def _refused(self, reason: str, exc: ConfigError) -> bool:
        log.error(
            "reload failed; keeping the last good policies and tenants",
            reason=reason,
            error=str(exc),
        )
        self._count("failed")
        return False

    def reload(self, reason: str = "SIGHUP") -> bool:
        """Loads everything anew; on any error keeps what runs now. True when swapped."""
        self._seen = self._watched()
        try:
            policies, problems = load_policies(self.policies)
        except ConfigError as exc:
            return self._refused(reason, exc)
        for problem in problems:
            if problem.severity == "error":
                log.error(
                    "policy file refused; keeping its last good version",
                    reason=reason,
                    problem=str(problem),
                )
        current = self.holder.policies
        bad = {Path(p.file).stem for p in problems if p.severity == "error"}
        merged = {name: policies.get(name) for name in policies.names()}
        for name in bad:
            # A broken file keeps the version that loaded last time, if any.
            if name not in merged and name in current.names():
                merged[name] = current.get(name)
        registry = PolicyRegistry(merged, policies.default)
        try:
            tenants = load_tenants(self.tenants, registry)
        except ConfigError as exc:
            return self._refused(reason, exc)
        self.holder.policies = registry
        self.holder.access.tenants = tenants
        log.info(
            "reloaded",
            reason=reason,
            policies=sorted(merged),
            tenants=len(tenants) if tenants else 0,
        )
        self._count("failed" if bad else "ok")
        return True

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.policy_reloads.labels(result).inc()

    async def watch(self) -> None:
        """Polls the files every `reload_poll_s` and reloads when they change."""
        interval = self.policies.reload_poll_s
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            if self._watched() != self._seen:
                self.reload("file change")
