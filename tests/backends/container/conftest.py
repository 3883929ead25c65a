"""A real Docker engine for the container tests. Without one they skip locally, saying
why, and fail under CI=true: CI installs and starts the engine (scripts/ci_docker.sh)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import docker
import docker.errors
import pytest
import pytest_asyncio

from sandbox.backends.base import BackendSession, RunSpec
from sandbox.backends.container.backend import ContainerBackend
from sandbox.backends.container.engine import SCOPE_LABEL
from sandbox.config import ContainerSettings
from sandbox.core.limits import EffectiveLimits
from sandbox.core.output import OutputSink
from sandbox_client import ExecutionResult, SandboxClient
from tests.conftest import ServerThread, docker_problem, require, running_server

# The images under test; SANDBOX_TEST_IMAGE / SANDBOX_TEST_DS_IMAGE point the tests at
# others (say, a runner built into its own tags with scripts/build_images.sh's IMAGE=).
IMAGE = os.environ.get("SANDBOX_TEST_IMAGE") or "sandbox-runner:latest"
DS_IMAGE = os.environ.get("SANDBOX_TEST_DS_IMAGE") or "sandbox-runner-datascience:latest"
RUNTIMES = ("runc", "runsc")
# Every container this test run makes carries this scope; the finalizer removes them all.
SCOPE = f"test-{secrets.token_hex(4)}"
MiB = 1024 * 1024
LIMITS = EffectiveLimits(
    wall_time_ms=10_000,
    memory_bytes=256 * MiB,
    output_bytes=1 * MiB,
    max_recursion_depth=200,
    cpu_millis=1000,
    pids=64,
    disk_bytes=64 * MiB,
)


@pytest.fixture(scope="session")
def engine() -> Iterator[docker.DockerClient]:
    require(docker_problem(IMAGE))
    client = docker.from_env(version="auto", timeout=30)
    yield client
    for container in client.containers.list(all=True, filters={"label": f"{SCOPE_LABEL}={SCOPE}"}):
        container.remove(force=True)
    client.close()


def runtime_problem(client: docker.DockerClient, runtime: str) -> str | None:
    if runtime in (client.info().get("Runtimes") or {}):
        return None
    return f"the {runtime} runtime is not registered with dockerd; see scripts/ci_docker.sh"


# The container settings of these tests' backends and servers.
CONTAINER: dict[str, Any] = {"image": IMAGE, "pool_size": 2, "max_concurrency": 4, "scope": SCOPE}


def make_backend(
    runtime: str = "runc", *, pool_limits: EffectiveLimits | None = LIMITS, **overrides: Any
) -> ContainerBackend:
    """A backend for these tests; `overrides` are ContainerSettings fields."""
    settings = ContainerSettings(**{**CONTAINER, "runtime": runtime, **overrides})
    return ContainerBackend(settings, pool_limits=pool_limits)


@pytest.fixture(scope="module")
def both_backends(engine: docker.DockerClient) -> Iterator[ServerThread]:
    """A real server with Monty and the container backend (runc) on."""
    with running_server(container={"enabled": True, **CONTAINER}) as server:
        yield server


@pytest_asyncio.fixture(scope="session", params=RUNTIMES)
async def backend(
    request: pytest.FixtureRequest, engine: docker.DockerClient
) -> AsyncIterator[ContainerBackend]:
    """A started backend with a filled warm pool, once per OCI runtime."""
    require(runtime_problem(engine, request.param))
    started = make_backend(request.param)
    await started.start()
    assert started.pool is not None
    await started.pool.wait_filled(120)
    yield started
    await started.stop()


@pytest_asyncio.fixture(scope="session")
async def runc_backend(engine: docker.DockerClient) -> AsyncIterator[ContainerBackend]:
    started = make_backend("runc")
    await started.start()
    yield started
    await started.stop()


@contextlib.asynccontextmanager
async def started(backend: ContainerBackend) -> AsyncIterator[ContainerBackend]:
    """`backend` started, and stopped on the way out."""
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()


async def run(
    backend: ContainerBackend,
    code: str,
    *,
    session: BackendSession | None = None,
    stdin: str = "",
    inputs: dict[str, Any] | None = None,
    on_output: OutputSink | None = None,
    denied_imports: frozenset[str] = frozenset(),
    **limits: int,
) -> ExecutionResult:
    spec = RunSpec(
        code=code,
        limits=replace(LIMITS, **limits),
        stdin=stdin,
        inputs=inputs or {},
        on_output=on_output,
        denied_imports=denied_imports,
    )
    return await backend.run(spec, session)


async def assert_healthy(backend: ContainerBackend) -> None:
    """`print(1)` still works: what every outcome test checks last."""
    result = await run(backend, "print(1)")
    assert result.ok, result.failure
    assert result.stdout == "1\n"


def signal_on_output() -> tuple[asyncio.Event, Callable[[str, str], None]]:
    """An event set (from any thread) once the run prints something."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def sink(stream: str, text: str) -> None:
        loop.call_soon_threadsafe(event.set)

    return event, sink


# A policy for hostile code through a real server: containers only, ctypes allowed (the
# machine-code tests need it), a 2 MiB output cap (a result at it fits the gRPC client's
# 4 MiB message limit). The server's built-in `default` policy stays too.
LAB_POLICY = """
name = "lab"
backends = ["container"]
allow_fallback = false
denied_imports = []
output_bytes = 2_097_152
"""


@dataclass
class Lab:
    """A real server with the container backend on (one OCI runtime); its policies are
    the built-in `default` and `lab` (LAB_POLICY)."""

    server: ServerThread
    runtime: str

    def client(self) -> SandboxClient:
        return SandboxClient(self.server.address, timeout_s=120)

    def execute(self, code: str, **options: Any) -> ExecutionResult:
        options.setdefault("backend", "container")
        options.setdefault("policy", "lab")
        with self.client() as client:
            return client.execute(code, **options)


@pytest.fixture(scope="session", params=RUNTIMES)
def lab(
    request: pytest.FixtureRequest,
    engine: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Lab]:
    require(runtime_problem(engine, request.param))
    policies = tmp_path_factory.mktemp(f"policies-{request.param}")
    (policies / "lab.toml").write_text(LAB_POLICY)
    with running_server(
        container={
            "enabled": True,
            "image": IMAGE,
            "runtime": request.param,
            "pool_size": 1,
            "max_concurrency": 4,
            "scope": SCOPE,
        },
        policies={"dir": str(policies)},
    ) as server:
        yield Lab(server=server, runtime=request.param)
