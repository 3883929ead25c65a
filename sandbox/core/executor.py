"""Runs requests: plan (core.plan), at most once per idempotency key (durable), on the
planned backends in order, and a result stamped with its id and policy. Sessions are
opened and closed here too. Knows nothing of gRPC; the edge records what it returns.

Every method takes a Trace that it fills with the plan as soon as there is one, so the
edge can record the policy and limits of a request whether it finished or was refused."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace

import structlog

from sandbox.access.tenants import Access
from sandbox.backends.base import ExecutionBackend, RunSpec
from sandbox.backends.tools import CheckpointMismatch
from sandbox.core import plan as planning
from sandbox.core.output import OutputSink
from sandbox.core.plan import Plan
from sandbox.core.request import Request
from sandbox.core.sessions import SessionEntry, SessionRegistry
from sandbox.durable.durability import Durability
from sandbox.durable.journal import Entry
from sandbox.durable.tool_host import ToolRelay
from sandbox.errors import PolicyDenied, Throttled, Unavailable
from sandbox.policy.model import PolicyRegistry
from sandbox_client.protocol import Backend, ExecutionResult, Failure, FailureKind

log = structlog.get_logger("sandbox.executor")


@dataclass
class Trace:
    """What the core decided about one request, for the edge's record."""

    plan: Plan | None = None


class Executor:
    def __init__(
        self,
        *,
        policies: PolicyRegistry,
        backends: Mapping[Backend, ExecutionBackend],
        sessions: SessionRegistry,
        access: Access | None = None,
        journal: Durability | None = None,
    ) -> None:
        self.policies = policies  # replaced whole by the reloader
        self.backends = dict(backends)
        self.sessions = sessions
        self.access = access or Access()
        self.journal = journal
        self._available = frozenset(self.backends)

    def plan(self, request: Request, trace: Trace) -> Plan:
        context = planning.Context(self.policies, self.access, self.sessions, self._available)
        trace.plan = planning.plan(request, context)
        return trace.plan

    # -- Execute, ExecuteStream ----------------------------------------------------------

    async def execute(
        self, request: Request, trace: Trace, on_output: OutputSink | None = None
    ) -> ExecutionResult:
        """Runs `request` (a repeat of a keyed one gets the recorded result)."""
        if self.journal is not None and request.idempotency_key:
            return await self.journal.once(
                request, lambda _entry: self._execute(request, trace, on_output)
            )
        return await self._execute(request, trace, on_output)

    async def _execute(
        self, request: Request, trace: Trace, on_output: OutputSink | None
    ) -> ExecutionResult:
        plan = self.plan(request, trace)
        spec = run_spec(request, plan, on_output)
        if plan.refusal is not None:
            result = plan.refusal
        elif plan.session is not None:
            result = await plan.session.backend.run(spec, plan.session.handle)
            self.sessions.discard_if_dead(plan.session)
        else:
            result = await self._run_steps(plan, spec)
        result = _stamped(result, plan, request)
        # Successes are counted by metrics and the audit log; a log line each would cost
        # more than a short run itself.
        (log.info if result.failure else log.debug)(
            "executed",
            execution_id=result.execution_id,
            backend=result.backend,
            kind=result.failure.kind if result.failure else None,
            wall_ms=result.usage.wall_ms,
            session_id=request.session_id or None,
        )
        return result

    async def _run_steps(self, plan: Plan, spec: RunSpec) -> ExecutionResult:
        first, *rest = plan.steps
        result = await self.backends[first].run(spec)
        for step in rest:
            if not _moves_on(result):
                break
            log.info("fallback", reason=result.failure.message if result.failure else "")
            result = await self.backends[step].run(spec)
            result = result.model_copy(update={"fallback_from": first})
        if plan.fallback_from is not None:
            result = result.model_copy(update={"fallback_from": plan.fallback_from})
        return result

    # -- Run (tool runs) -------------------------------------------------------------------

    async def run_tools(
        self,
        request: Request,
        trace: Trace,
        relay: ToolRelay,
        on_output: OutputSink | None = None,
    ) -> ExecutionResult:
        """Runs (or resumes, or replays) a tool run. Every answer is journaled: a run whose
        server or client died resumes under the same key, from its checkpoint in Monty,
        replayed from the start in a container (calls already answered are answered
        from the journal, not by the tools again). AUTO moves to a container only when
        Monty says UNSUPPORTED before any tool was called."""
        journal = self.journal
        if journal is None:
            raise Unavailable("tool runs need the journal, which is off on this server")
        if not request.idempotency_key:
            request = replace(request, idempotency_key="run_" + uuid.uuid4().hex)

        async def run(entry: Entry) -> ExecutionResult:
            plan = self.plan(request, trace)
            if plan.refusal is not None:
                return _stamped(plan.refusal, plan, request)
            host = journal.host(request, entry, relay)
            try:
                resume = journal.resume_point(request, entry)
                spec = replace(
                    run_spec(request, plan, on_output),
                    tools={t.name: t.is_async for t in request.tools or ()},
                    seed=entry.pinned.seed,
                    resume=resume,
                    mounts=(),  # tool runs never see host directories
                )
                first, *rest = plan.steps
                result = await self.backends[first].run_tools(spec, host)
                for step in rest:
                    # Only code that called no tool moves: a container starts it again.
                    if not _moves_on(result) or host.calls or resume is not None:
                        break
                    log.info("fallback", reason=result.failure.message if result.failure else "")
                    result = await self.backends[step].run_tools(spec, host)
                    result = result.model_copy(update={"fallback_from": first})
                if plan.fallback_from is not None:
                    result = result.model_copy(update={"fallback_from": plan.fallback_from})
            except CheckpointMismatch as exc:
                result = _corrupt(str(exc), plan.steps[0])
            return _stamped(result, plan, request)

        return await journal.once(request, run, resumable=True)

    # -- sessions --------------------------------------------------------------------------

    async def create_session(self, request: Request, trace: Trace) -> SessionEntry:
        context = planning.Context(self.policies, self.access, self.sessions, self._available)
        policy = planning.policy_for(request.tenant, request.policy, context)
        kind = Backend.MONTY if request.backend in (None, Backend.AUTO) else request.backend
        assert kind is not None
        planning.backend_allowed(kind, policy, self._available)
        limits = policy.limits(request.limits)
        if kind is Backend.CONTAINER:
            planning.check_container_minimums(limits)
        trace.plan = Plan(
            execution_id="", policy=policy, limits=limits, steps=(kind,), session=None
        )
        held = self.sessions.count(tenant=request.tenant, policy=policy.name)
        if held >= policy.sessions_per_tenant:
            message = (
                f"policy '{policy.name}' allows {policy.sessions_per_tenant} sessions per "
                f"tenant and tenant '{request.tenant}' holds {held}"
            )
            if not held:
                raise PolicyDenied(message, field="policy")
            raise Throttled(
                message,
                field="policy",
                retry_after_ms=int(self.sessions.idle_timeout_s * 1000),
            )
        return await self.sessions.create(
            self.backends[kind], policy, limits, tenant=request.tenant
        )

    async def close_session(self, session_id: str, tenant: str) -> None:
        await self.sessions.close(session_id, tenant=tenant)


def run_spec(request: Request, plan: Plan, on_output: OutputSink | None) -> RunSpec:
    """What a backend is asked to run for `request` as planned."""
    policy = plan.policy
    return RunSpec(
        code=request.code,
        limits=plan.limits,
        inputs=request.inputs,
        stdin=request.stdin,
        on_output=on_output,
        image=policy.container_image,
        runtime=policy.container_runtime,
        mounts=tuple((m.host_path, m.guest_path, m.mode == "ro") for m in policy.mounts),
        denied_imports=policy.denied_imports,
    )


def _moves_on(result: ExecutionResult) -> bool:
    """Whether the next planned backend gets the code: only when this one cannot run it."""
    return result.failure is not None and result.failure.kind is FailureKind.UNSUPPORTED


def _stamped(result: ExecutionResult, plan: Plan, request: Request) -> ExecutionResult:
    return result.model_copy(
        update={
            "execution_id": plan.execution_id,
            "policy_name": plan.policy.name,
            "policy_digest": plan.policy.digest,
            "session_id": request.session_id,
        }
    )


def _corrupt(message: str, backend: Backend) -> ExecutionResult:
    return ExecutionResult.failed(
        Failure.of(
            FailureKind.CORRUPT_STATE,
            f"{message}; the run was discarded and a retry starts it afresh "
            "(tools already called will be called again)",
        ),
        backend=backend,
    )
