"""What `sandbox doctor` can say about the container backend on this machine: whether the
engine answers, whether the image is there, and which OCI runtimes can run it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sandbox.backends.base import RunSpec
from sandbox.backends.container.backend import ContainerBackend
from sandbox.backends.container.engine import Runtime
from sandbox.backends.container.settings import ContainerSettings
from sandbox.core.limits import EffectiveLimits

MiB = 1024 * 1024
_PROBE_LIMITS = EffectiveLimits(
    wall_time_ms=20_000,
    memory_bytes=128 * MiB,
    output_bytes=64 * 1024,
    max_recursion_depth=200,
    cpu_millis=1000,
    pids=32,
    disk_bytes=16 * MiB,
)


@dataclass(frozen=True)
class RuntimeCheck:
    runtime: Runtime
    works: bool
    detail: str  # the time a cold print(1) took, or why it failed


async def check_runtimes(
    settings: ContainerSettings, *, runtimes: tuple[Runtime, ...] = ("runc", "runsc")
) -> list[RuntimeCheck]:
    """Starts one container per runtime (no pool) from the configured image and engine,
    and runs print(1) in it."""
    checks = []
    for runtime in runtimes:
        probe = settings.model_copy(update={"runtime": runtime, "pool_size": 0, "scope": "doctor"})
        backend = ContainerBackend(probe)
        await backend.start()
        started = time.monotonic()
        try:
            result = await backend.run(RunSpec(code="print(1)", limits=_PROBE_LIMITS))
        finally:
            await backend.stop()
        if result.ok and result.stdout == "1\n":
            took = f"print(1) in a new container: {(time.monotonic() - started) * 1000:.0f} ms"
            checks.append(RuntimeCheck(runtime, True, took))
        else:
            why = result.failure.message if result.failure else repr(result.stdout)
            checks.append(RuntimeCheck(runtime, False, why))
    return checks
