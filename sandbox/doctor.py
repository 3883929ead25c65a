"""`sandbox doctor`: what works on this machine, checked for real."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

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
    return [await _monty(), *await asyncio.to_thread(_docker)]


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


def _docker() -> list[Check]:
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
    runtimes = sorted(client.info().get("Runtimes", {}))
    checks.append(Check("oci runtimes", True, ", ".join(runtimes) or "none reported"))
    checks.append(
        Check(
            "gvisor (runsc)",
            "runsc" in runtimes,
            "registered" if "runsc" in runtimes else "not registered",
        )
    )
    client.close()
    return checks
