"""`sandbox doctor`: what works on this machine, checked for real, and whether the
configuration given (policies, tenants, journal and audit directories, the images its
policies need) holds. A required check that fails makes it exit 1."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.access.reload import load_policies, load_tenants
from sandbox.backends.base import RunSpec
from sandbox.backends.container.doctor import check_runtimes
from sandbox.backends.monty.backend import MontyBackend
from sandbox.config import ContainerSettings, MontySettings, Settings
from sandbox.durable.journal import journal_holder
from sandbox.errors import ConfigError
from sandbox.policy.model import DEFAULT_POLICY


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = False


async def run_checks(settings: Settings) -> list[Check]:
    checks = [await _monty()]
    configured = _configuration(settings)
    checks += configured.checks
    engine = await asyncio.to_thread(_docker, settings.container, configured.images)
    checks += engine
    if all(check.ok for check in engine):
        # Through the real backend, hardening and runner included: what "works" means.
        for probe in await check_runtimes(settings.container):
            checks.append(Check(f"runtime {probe.runtime}", probe.works, probe.detail))
    return checks


@dataclass
class _Configured:
    checks: list[Check]
    images: dict[str, list[str]]  # image -> the policies that run in it


def _configuration(settings: Settings) -> _Configured:
    """The settings' own files and directories: policies, tenants, journal, audit log;
    and which images the policies need."""
    checks: list[Check] = []
    images: dict[str, list[str]] = {settings.container.image: ["the server's default"]}
    try:
        policies, problems = load_policies(settings.policies)
    except ConfigError as exc:
        return _Configured([Check("policies", False, str(exc), required=True)], images)
    errors = [str(p) for p in problems if p.severity == "error"]
    where = f" from {settings.policies.dir}" if settings.policies.dir else " (built-in only)"
    names = ", ".join(policies.names())
    if errors:
        checks.append(Check("policies", False, f"{len(errors)} refused: {errors[0]}", True))
    else:
        checks.append(Check("policies", True, f"{names}{where}", True))
    for name in policies.names():
        image = policies.get(name).container_image
        if image:
            images.setdefault(image, []).append(name)
    if settings.tenants.file is not None:
        try:
            tenants = load_tenants(settings.tenants, policies)
        except ConfigError as exc:
            checks.append(Check("tenants", False, str(exc), True))
        else:
            count = len(tenants.tenants) if tenants is not None else 0
            checks.append(Check("tenants", True, f"{count} in {settings.tenants.file}", True))
    if settings.journal.enabled:
        journal = settings.journal.path or settings.journal.state_dir / "journal.sqlite3"
        holder = journal_holder(journal)
        note = f", in use by process {holder}" if holder else ""
        checks.append(_writable("journal", journal.parent, note))
    if settings.audit.dir is not None:
        checks.append(_writable("audit log", settings.audit.dir, ""))
    return _Configured(checks, images)


def _writable(name: str, directory: Path, note: str) -> Check:
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # created on first start, if its parent lets us
    if not os.access(existing, os.W_OK | os.X_OK):
        return Check(name, False, f"{directory}: not writable by this user", True)
    return Check(name, True, f"{directory}{note}", True)


async def _monty() -> Check:
    backend = MontyBackend(MontySettings(min_workers=1, max_workers=1))
    try:
        await backend.start()
        started = time.perf_counter()
        result = await backend.run(RunSpec(code="1 + 1", limits=DEFAULT_POLICY.limits()))
        elapsed_ms = (time.perf_counter() - started) * 1000
    except Exception as exc:
        return Check("monty", False, f"cannot start workers: {exc}", required=True)
    finally:
        await backend.stop()
    if result.result_json != "2":
        return Check("monty", False, f"1 + 1 gave {result.result_json!r}", required=True)
    return Check("monty", True, f"1 + 1 = 2 in {elapsed_ms:.1f} ms", required=True)


def _docker(settings: ContainerSettings, images: dict[str, list[str]]) -> list[Check]:
    import docker
    import docker.errors

    try:
        client = (
            docker.DockerClient(base_url=settings.docker_host, version="auto", timeout=5)
            if settings.docker_host
            else docker.from_env(version="auto", timeout=5)
        )
        version = client.version()
    except docker.errors.DockerException as exc:
        return [Check("docker engine", False, f"not reachable ({exc}); container backend off")]
    checks = [
        Check("docker engine", True, f"API {version.get('ApiVersion')}, {version.get('Version')}")
    ]
    for image, users in images.items():
        try:
            client.images.get(image)
        except docker.errors.DockerException:
            missing = f"missing: run `make image` (used by {', '.join(users)})"
            checks.append(Check(f"image {image}", False, missing))
        else:
            checks.append(Check(f"image {image}", True, f"present (used by {', '.join(users)})"))
    client.close()
    return checks
