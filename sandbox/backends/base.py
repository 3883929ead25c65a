"""The one seam every execution backend sits behind, tool runs included.

A backend receives plain, already-clamped settings (a RunSpec) and returns an
ExecutionResult. It never raises for anything the code did; exceptions are bugs, the
caller's cancellation, or CheckpointMismatch from a ToolHost."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sandbox.backends.tools import ToolHost
from sandbox.core.limits import EffectiveLimits
from sandbox.core.output import OutputSink
from sandbox_client.protocol.models import Backend, ExecutionResult


@dataclass(frozen=True, kw_only=True)
class Resume:
    """Where an interrupted tool run stopped: a verified checkpoint of the interpreter,
    the number of calls answered before it, and what the code had printed by then."""

    blob: bytes
    seq: int
    output: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    code: str
    limits: EffectiveLimits
    inputs: Mapping[str, Any] = field(default_factory=dict)
    stdin: str = ""
    # Receives output chunks as they are produced, possibly from another thread.
    on_output: OutputSink | None = None
    # Container image and OCI runtime chosen by the policy; "" means the backend's own.
    image: str = ""
    runtime: Literal["", "runc", "runsc"] = ""
    # Host directories Monty code may see: (host path, path in the sandbox, read-only).
    # Containers and tool runs never get host directories.
    mounts: tuple[tuple[str, str, bool], ...] = ()
    # Modules the policy denies; a container's runner refuses to load them for the code
    # (Monty checks them before it runs). Default: none.
    denied_imports: frozenset[str] = frozenset()
    # AUTO: another backend runs the code if this one says UNSUPPORTED. Monty then
    # reports what it may have got wrong where CPython would not (an error of a known
    # divergence, a time limit it hit being slower) as UNSUPPORTED, not as the code's.
    fallback_follows: bool = False
    # Tool runs only (ExecutionBackend.run_tools): the tools the code may call (name ->
    # is_async), `random`'s seed (pinned by the journal, so a resumed or replayed run
    # draws the same numbers), and where to resume, if anywhere.
    tools: Mapping[str, bool] = field(default_factory=dict)
    seed: int = 0
    resume: Resume | None = None


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

    async def run_tools(self, spec: RunSpec, host: ToolHost) -> ExecutionResult:
        """Runs `spec` whose code may call `spec.tools`, each call answered through
        `host` (which answers calls already recorded from its records). A backend that
        can restore its interpreter resumes from `spec.resume` and checkpoints through
        `host` after each answer (Monty); one that cannot starts the code again and the
        host answers the calls it already answered (a container). Time spent waiting for
        answers is not charged to the wall-time budget."""
        ...

    async def open_session(self, limits: EffectiveLimits) -> BackendSession: ...

    async def close_session(self, session: BackendSession) -> None: ...
