"""`sandbox doctor`: what works on this machine, checked for real."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from .backends.base import RunSpec
from .backends.monty import MontyBackend
from .config import Settings
from .policy import DEFAULT_POLICY


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = False


async def run_checks(settings: Settings) -> list[Check]:
    return [await _monty(), *await asyncio.to_thread(_docker, settings)]


async def _monty() -> Check:
    backend = MontyBackend(min_workers=1, max_workers=1)
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


def _docker(settings: Settings) -> list[Check]:
    import docker
    import docker.errors

    try:
        client = docker.from_env(version="auto", timeout=5)
        version = client.version()
    except docker.errors.DockerException as exc:
        return [Check("docker engine", False, f"not reachable ({exc}); container backend off")]
    checks = [
        Check("docker engine", True, f"API {version.get('ApiVersion')}, {version.get('Version')}")
    ]
    image = settings.container_image
    try:
        client.images.get(image)
    except docker.errors.DockerException:
        checks.append(Check(f"image {image}", False, "missing: run `make image`"))
        client.close()
        return checks
    checks.append(Check(f"image {image}", True, "present"))
    registered = set(client.info().get("Runtimes", {}))
    for runtime in ("runc", "runsc"):
        checks.append(_runtime_check(client, image, runtime, registered))
    client.close()
    return checks


def _runtime_check(client: Any, image: str, runtime: str, registered: set[str]) -> Check:
    """Starts one throwaway, network-less container under `runtime`."""
    import docker.errors

    name = f"runtime {runtime}"
    if runtime not in registered:
        return Check(name, False, "not registered with dockerd")
    started = time.perf_counter()
    try:
        output = client.containers.run(
            image,
            ["python3", "-c", "print(6 * 7)"],
            runtime=runtime,
            network_mode="none",
            remove=True,
            entrypoint=[],
        )
    except docker.errors.DockerException as exc:
        return Check(name, False, f"cannot start a container: {exc}")
    elapsed_ms = (time.perf_counter() - started) * 1000
    ok = output.strip() == b"42"
    return Check(name, ok, f"python3 ran in {elapsed_ms:.0f} ms" if ok else f"got {output!r}")
