"""The one seam every execution backend sits behind.

A backend receives plain, already-clamped settings and returns an ExecutionResult. It
never raises for anything the code did; exceptions are bugs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sandbox.core.limits import Limits
from sandbox.core.output import OutputSink
from sandbox_client import Backend, ExecutionResult


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    code: str
    limits: Limits
    inputs: Mapping[str, Any] = field(default_factory=dict)
    stdin: str = ""
    # Receives output chunks as they are produced, possibly from another thread.
    on_output: OutputSink | None = None
    # Container image and OCI runtime chosen by the policy; "" means the backend's own.
    image: str = ""
    runtime: Literal["", "runc", "runsc"] = ""
    # Host directories Monty code may see: (host path, path in the sandbox, read-only).
    # Containers never get host directories.
    mounts: tuple[tuple[str, str, bool], ...] = ()


class BackendSession(Protocol):
    """State kept across runs. `alive` turns False when the backend had to discard it
    (a crash, or a timeout that leaves the heap in an unknown state)."""

    @property
    def alive(self) -> bool: ...


class ExecutionBackend(Protocol):
    kind: Backend

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def run(self, spec: RunSpec, session: BackendSession | None = None) -> ExecutionResult:
        """Runs `spec`, inside `session` when given (a session this backend opened)."""
        ...

    async def open_session(self, limits: Limits) -> BackendSession: ...

    async def close_session(self, session: BackendSession) -> None: ...
