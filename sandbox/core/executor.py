"""Runs one validated request: policy -> session -> backend (with AUTO's fallback) ->
a result stamped with its id and policy. Knows nothing of gRPC."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from sandbox.access.tenants import LOCAL_TENANT
from sandbox.backends.base import ExecutionBackend, RunSpec
from sandbox.core.limits import Limits, RequestedLimits
from sandbox.core.output import OutputSink
from sandbox.core.recorder import Recorder
from sandbox.core.sessions import SessionEntry, SessionRegistry
from sandbox.errors import RequestError, invalid
from sandbox.policy.model import Policy, PolicyRegistry
from sandbox.policy.static_check import find_violation
from sandbox_client import Backend, ExecutionResult, Failure, FailureKind, Frame

if TYPE_CHECKING:
    from sandbox.durable.durability import Durability

log = structlog.get_logger("sandbox.executor")


@dataclass(frozen=True, kw_only=True)
class ExecuteCall:
    """A request that passed wire validation."""

    code: str
    backend: Backend | None = None
    policy: str = ""
    inputs: Mapping[str, Any] = field(default_factory=dict)
    stdin: str = ""
    limits: RequestedLimits = field(default_factory=RequestedLimits)
    session_id: str = ""
    idempotency_key: str = ""
    inputs_size: int = 0  # bytes of inputs as sent, checked against the policy
    # Who asks, as authenticated at the edge; sessions and policies are checked against it.
    tenant: str = LOCAL_TENANT


@dataclass
class _Seen:
    """What execute() decided before it finished or was refused, for the audit record."""

    policy: Policy | None = None
    limits: Limits | None = None


class Executor:
    journal: Durability | None = None  # set by the server when the journal is on

    def __init__(
        self,
        *,
        policies: PolicyRegistry,
        backends: Mapping[Backend, ExecutionBackend],
        sessions: SessionRegistry,
        recorder: Recorder | None = None,
    ) -> None:
        self.policies = policies
        self.backends = dict(backends)
        self.sessions = sessions
        self.recorder = recorder or Recorder()

    async def execute(
        self, call: ExecuteCall, on_output: OutputSink | None = None
    ) -> ExecutionResult:
        """Runs `call` and records it (audit, metrics), refused or not."""
        seen = _Seen()
        try:
            if self.journal is not None and call.idempotency_key:
                # At most once per key; a repeat gets the recorded result (durable.py).
                result = await self.journal.once(
                    call, lambda _entry: self._execute(call, on_output, seen)
                )
            else:
                result = await self._execute(call, on_output, seen)
        except RequestError as error:
            await self._record(call, seen, None, error)
            raise
        except asyncio.CancelledError:
            cancelled = RequestError(FailureKind.CANCELLED, "the caller cancelled")
            self.recorder.execution(
                call, policy=seen.policy, limits=seen.limits, result=None, error=cancelled
            )
            raise
        await self._record(call, seen, result, None)
        return result

    async def _record(
        self,
        call: ExecuteCall,
        seen: _Seen,
        result: ExecutionResult | None,
        error: RequestError | None,
    ) -> None:
        written = self.recorder.execution(
            call, policy=seen.policy, limits=seen.limits, result=result, error=error
        )
        if written is not None:
            await asyncio.wrap_future(written)

    async def _execute(
        self, call: ExecuteCall, on_output: OutputSink | None, seen: _Seen
    ) -> ExecutionResult:
        session = (
            self.sessions.get(call.session_id, tenant=call.tenant) if call.session_id else None
        )
        policy = seen.policy = self._policy_for(call, session)
        check_size(call, policy)
        limits = session.limits if session is not None else policy.limits(call.limits)
        seen.limits = limits
        if session is not None and call.limits != RequestedLimits():
            # A session's sandbox was set up with its limits; lower ones cannot apply now.
            raise invalid("limits are fixed when a session is created", field="limits")
        spec = run_spec(call, policy, limits, on_output)

        if session is not None:
            violation = policy_violation(call.code, policy, session.backend.kind)
            if violation is not None:
                result = violation
            else:
                result = await session.backend.run(spec, session.handle)
                self.sessions.discard_if_dead(session)
        else:
            requested = call.backend or Backend.AUTO
            if requested not in policy.backends:
                raise RequestError(
                    FailureKind.POLICY_VIOLATION,
                    f"policy '{policy.name}' does not allow backend {requested.value}",
                    field="backend",
                )
            result = await self._run(requested, spec, policy)

        result = result.model_copy(
            update={
                "execution_id": "exe_" + os.urandom(16).hex(),
                "policy_name": policy.name,
                "policy_digest": policy.digest,
                "session_id": call.session_id,
            }
        )
        # Successes are counted by metrics and the audit log; a log line each would cost
        # more than a short run itself.
        (log.info if result.failure else log.debug)(
            "executed",
            execution_id=result.execution_id,
            backend=result.backend,
            kind=result.failure.kind if result.failure else None,
            wall_ms=result.usage.wall_ms,
            session_id=call.session_id or None,
        )
        return result

    async def _run(self, requested: Backend, spec: RunSpec, policy: Policy) -> ExecutionResult:
        if requested is not Backend.AUTO:
            violation = policy_violation(spec.code, policy, requested)
            return violation or await self._backend(requested).run(spec)

        can_fall_back = (
            policy.allow_fallback
            and Backend.CONTAINER in self.backends
            and Backend.CONTAINER in policy.backends
        )
        container_violation = policy_violation(spec.code, policy, Backend.CONTAINER)
        if container_violation is not None:
            return container_violation
        monty_violation = policy_violation(spec.code, policy, Backend.MONTY)
        if monty_violation is not None:
            # Denied in Monty only (e.g. `import os`): a container may still run it.
            if not can_fall_back:
                return monty_violation
            result = None
        else:
            result = await self._backend(Backend.MONTY).run(spec)
            failure = result.failure
            if not (failure and failure.kind is FailureKind.UNSUPPORTED and can_fall_back):
                return result
            log.info("fallback", reason=failure.message)
        fallback = await self._backend(Backend.CONTAINER).run(spec)
        return fallback.model_copy(update={"fallback_from": Backend.MONTY})

    def _backend(self, kind: Backend) -> ExecutionBackend:
        backend = self.backends.get(kind)
        if backend is None:
            raise RequestError(
                FailureKind.INFRA_UNAVAILABLE,
                f"the {kind.value} backend is not enabled on this server",
                field="backend",
                retry_after_ms=0,
            )
        return backend

    def _policy_for(self, call: ExecuteCall, session: SessionEntry | None) -> Policy:
        if session is None:
            return self._policy_named(call.policy, call.tenant)
        if call.policy and call.policy != session.policy.name:
            raise invalid(
                f"session {session.id!r} runs under policy '{session.policy.name}', "
                f"not '{call.policy}'",
                field="policy",
            )
        if call.backend not in (None, Backend.AUTO, session.backend.kind):
            raise invalid(
                f"session {session.id!r} runs on {session.backend.kind.value}", field="backend"
            )
        return session.policy

    def _policy_named(self, name: str, tenant: str) -> Policy:
        policy = self.policies.get(name)
        if not policy.allows_tenant(tenant):
            raise RequestError(
                FailureKind.POLICY_VIOLATION,
                f"policy '{policy.name}' is not open to tenant '{tenant}'",
                field="policy",
            )
        return policy

    async def create_session(
        self,
        backend: Backend | None,
        policy_name: str,
        requested: RequestedLimits,
        tenant: str = LOCAL_TENANT,
    ) -> SessionEntry:
        policy = self._policy_named(policy_name, tenant)
        kind = Backend.MONTY if backend in (None, Backend.AUTO) else backend
        assert kind is not None
        if kind not in policy.backends:
            raise RequestError(
                FailureKind.POLICY_VIOLATION,
                f"policy '{policy.name}' does not allow backend {kind.value}",
                field="backend",
            )
        held = self.sessions.count(tenant=tenant, policy=policy.name)
        if held >= policy.sessions_per_tenant:
            raise RequestError(
                FailureKind.THROTTLED if held else FailureKind.POLICY_VIOLATION,
                f"policy '{policy.name}' allows {policy.sessions_per_tenant} sessions per "
                f"tenant and tenant '{tenant}' holds {held}",
                field="policy",
                retry_after_ms=int(self.sessions.idle_timeout_s * 1000) if held else 0,
            )
        return await self.sessions.create(
            self._backend(kind), policy, policy.limits(requested), tenant=tenant
        )

    async def close_session(self, session_id: str, tenant: str = LOCAL_TENANT) -> None:
        await self.sessions.close(session_id, tenant=tenant)


def _line(code: str, number: int) -> str:
    lines = code.splitlines()
    return lines[number - 1].strip() if 0 < number <= len(lines) else ""


def policy_violation(code: str, policy: Policy, backend: Backend) -> ExecutionResult | None:
    """A POLICY_VIOLATION result if `code` breaks the policy's static rules on `backend`."""
    denied = policy.denied_imports
    if backend is Backend.MONTY:
        denied = denied | policy.monty_denied_imports
    violation = find_violation(code, denied)
    if violation is None:
        return None
    frame = Frame(
        line=violation.line,
        column=violation.column,
        source_line=_line(code, violation.line),
    )
    failure = Failure.of(
        FailureKind.POLICY_VIOLATION,
        f"{violation.describe()} '{policy.name}' (line {violation.line})",
        frames=(frame,),
        details={"rule": violation.rule, "target": violation.target},
    )
    return ExecutionResult.failed(failure, backend=backend)


def run_spec(
    call: ExecuteCall, policy: Policy, limits: Limits, on_output: OutputSink | None
) -> RunSpec:
    """What a backend is asked to run for `call` under `policy`."""
    return RunSpec(
        code=call.code,
        limits=limits,
        inputs=call.inputs,
        stdin=call.stdin,
        on_output=on_output,
        image=policy.container_image,
        runtime=policy.container_runtime,
        mounts=tuple((m.host_path, m.guest_path, m.mode == "ro") for m in policy.mounts),
    )


def check_size(call: ExecuteCall, policy: Policy) -> None:
    """Raises INVALID_REQUEST for empty code, or code or inputs larger than the policy takes."""
    if not call.code.strip():
        raise invalid("code is empty", field="code")
    size = len(call.code.encode("utf-8", "surrogatepass"))
    if size > policy.code_bytes:
        raise invalid(
            f"code is {size} bytes; policy '{policy.name}' accepts at most {policy.code_bytes}",
            field="code",
        )
    extra = call.inputs_size + len(call.stdin.encode("utf-8", "surrogatepass"))
    if extra > policy.inputs_bytes:
        raise invalid(
            f"inputs and stdin are {extra} bytes; policy '{policy.name}' accepts at most "
            f"{policy.inputs_bytes}",
            field="inputs_json",
        )
