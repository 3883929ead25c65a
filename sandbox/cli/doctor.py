"""`sandbox doctor`: what works on this machine, checked for real."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from sandbox.backends.base import RunSpec
from sandbox.backends.container.doctor import check_runtimes
from sandbox.backends.monty.backend import MontyBackend
from sandbox.config import ContainerSettings, MontySettings, Settings
from sandbox.policy.model import DEFAULT_POLICY


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = False


async def run_checks(settings: Settings) -> list[Check]:
    checks = [await _monty()]
    engine = await asyncio.to_thread(_docker, settings.container)
    checks += engine
    if all(check.ok for check in engine):
        # Through the real backend, hardening and runner included: what "works" means.
        for probe in await check_runtimes(settings.container):
            checks.append(Check(f"runtime {probe.runtime}", probe.works, probe.detail))
    return checks


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


def _docker(settings: ContainerSettings) -> list[Check]:
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
    image = settings.image
    try:
        client.images.get(image)
    except docker.errors.DockerException:
        checks.append(Check(f"image {image}", False, "missing: run `make image`"))
        client.close()
        return checks
    checks.append(Check(f"image {image}", True, "present"))
    client.close()
    return checks
