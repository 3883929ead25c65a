"""The one place that decides how a request runs, for every RPC that runs code.

`plan()` settles, once and in this order: that the request is well formed for its kind
(tools declared, no session for a tool run), the policy (the tenant's own list and the
policy's `tenants` list, or the session's), the size checks, the effective limits, the
backends to try in order (AUTO: Monty, then a container when the policy and the server
allow it), the policy's static checks on that order, and the execution id. A request it
cannot serve raises a RequestError; code the policy forbids is not an error but a Plan
whose `refusal` is the POLICY_VIOLATION result to answer with.

Knows nothing of gRPC, of the journal or of how a backend runs: Execute, ExecuteStream
and Run all call it, and a table-driven test holds their decisions equal. It is a
coroutine for one reason: the static checks of a source larger than a few hundred bytes
run in the server's checker processes (policy/checker.py), within the policy's
`static_check_ms`, never on the event loop."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from sandbox.access.tenants import Access
from sandbox.backends.container.minimums import below_container_minimums
from sandbox.backends.monty import divergence
from sandbox.core.limits import EffectiveLimits
from sandbox.core.request import Request, ToolDecl
from sandbox.core.sessions import SessionEntry, SessionRegistry
from sandbox.errors import InvalidRequest, NotEnabled, PolicyDenied, Throttled
from sandbox.policy.checker import CheckerFailed, CheckersBusy, CheckOverBudget, StaticChecker
from sandbox.policy.model import Policy, PolicyRegistry
from sandbox.policy.static_check import Violation, divergences, findings, first_violation
from sandbox_client.protocol.convert import NO_LIMITS_ASKED
from sandbox_client.protocol.models import Backend, ExecutionResult, Failure, FailureKind, Frame

MAX_TOOLS = 64
_MAX_TOOL_NAME = 128


@dataclass(frozen=True, kw_only=True)
class Plan:
    execution_id: str
    policy: Policy
    limits: EffectiveLimits
    # Backends to run on, in order: the next one runs only when the one before says
    # UNSUPPORTED (and, in a tool run, before the code called a tool).
    steps: tuple[Backend, ...]
    # Set when the first step is not the backend the request asked for (AUTO's Monty
    # step dropped because the policy denies the code there but not in a container).
    fallback_from: Backend | None = None
    # Why the first step is not the one asked for (set with fallback_from).
    fallback_reason: str = ""
    # Monty runs code of a known divergence, with nowhere to move it (MONTY asked for,
    # or AUTO without a container): the result says so.
    fidelity_warning: str = ""
    session: SessionEntry | None = None
    # The answer when the policy's static rules forbid the code: nothing runs.
    refusal: ExecutionResult | None = None


@dataclass(frozen=True)
class Context:
    """What planning reads: the server's policies, tenants, sessions and backends."""

    policies: PolicyRegistry
    access: Access
    sessions: SessionRegistry
    available: frozenset[Backend]
    # The server's checker processes; None checks on the caller's thread (unit tests).
    checker: StaticChecker | None = field(default=None, kw_only=True)


async def plan(request: Request, context: Context) -> Plan:
    if request.is_tool_run:
        _check_tools(request.tools or ())
        if request.session_id:
            raise InvalidRequest("tool runs do not take a session", field="session_id")
    session = (
        context.sessions.get(request.session_id, tenant=request.tenant)
        if request.session_id
        else None
    )
    if session is not None:
        policy = _session_policy(request, session)
    else:
        policy = policy_for(request.tenant, request.policy, context)
    check_size(request, policy)
    if session is not None:
        if request.limits != NO_LIMITS_ASKED:
            # A session's sandbox was set up with its limits; lower ones cannot apply now.
            raise InvalidRequest("limits are fixed when a session is created", field="limits")
        limits = session.limits
        steps: tuple[Backend, ...] = (session.backend.kind,)
    else:
        limits = policy.limits(request.limits)
        steps = _steps(request.backend or Backend.AUTO, policy, context.available)
    fallback_from, fallback_reason, warning = None, "", ""
    found = await static_findings(request, policy, context.checker)
    refusal = violation(request.code, found, policy, steps[0])
    if (
        refusal is not None
        and len(steps) > 1
        and violation(request.code, found, policy, steps[1]) is None
    ):
        # Denied in Monty only (e.g. `import os`): the container may still run it.
        assert refusal.failure is not None
        fallback_reason = f"denied in Monty: {refusal.failure.message}"
        fallback_from, steps, refusal = steps[0], steps[1:], None
    if steps[0] is Backend.CONTAINER:
        check_container_minimums(limits)
    elif Backend.CONTAINER in steps and below_container_minimums(dataclasses.asdict(limits)):
        # AUTO's fallback cannot run under these limits: Monty alone (what it cannot run
        # is UNSUPPORTED, and asking for the container says why).
        steps = tuple(step for step in steps if step is not Backend.CONTAINER)
    diverging = divergences(found) if policy.fidelity_routing else ()
    if diverging and refusal is None and steps[0] is Backend.MONTY:
        first = diverging[0]
        if len(steps) > 1:
            # Monty would answer, perhaps wrongly: the container answers as CPython does.
            fallback_reason = "Monty diverges from CPython: " + divergence.reason(
                first.target, first.line
            )
            fallback_from, steps = steps[0], steps[1:]
        else:
            warning = divergence.warning(first.target, first.line)
    return Plan(
        execution_id=new_execution_id(),
        policy=policy,
        limits=limits,
        steps=steps,
        fallback_from=fallback_from,
        fallback_reason=fallback_reason,
        fidelity_warning=warning,
        session=session,
        refusal=refusal,
    )


def policy_for(tenant: str, requested: str, context: Context) -> Policy:
    """The policy a request (or a new session) runs under, once both lists allow the
    tenant: the tenant's `allowed_policies`, and the policy's own `tenants`."""
    policy = context.policies.get(context.access.policy_for(tenant, requested))
    if not policy.allows_tenant(tenant):
        raise PolicyDenied(
            f"policy '{policy.name}' is not open to tenant '{tenant}'", field="policy"
        )
    return policy


def backend_allowed(requested: Backend, policy: Policy, available: frozenset[Backend]) -> None:
    """Raises unless `policy` allows `requested` and this server has it (AUTO needs Monty)."""
    if requested not in policy.backends:
        raise PolicyDenied(
            f"policy '{policy.name}' does not allow backend {requested.value}", field="backend"
        )
    needed = Backend.MONTY if requested is Backend.AUTO else requested
    if needed not in available:
        raise NotEnabled(f"the {needed.value} backend {_HOW_TO_ENABLE[needed]}", field="backend")


_HOW_TO_ENABLE = {
    Backend.CONTAINER: "is not enabled on this server: its operator starts it with "
    "[container] enabled = true (see examples/containers.toml) and a Docker engine "
    "(`sandbox doctor` says what is missing); send backend AUTO or MONTY meanwhile",
    Backend.MONTY: "is not enabled on this server; send backend CONTAINER",
}


def _steps(
    requested: Backend, policy: Policy, available: frozenset[Backend]
) -> tuple[Backend, ...]:
    backend_allowed(requested, policy, available)
    if requested is not Backend.AUTO:
        return (requested,)
    can_fall_back = (
        policy.allow_fallback
        and Backend.CONTAINER in available
        and Backend.CONTAINER in policy.backends
    )
    return (Backend.MONTY, Backend.CONTAINER) if can_fall_back else (Backend.MONTY,)


def check_container_minimums(limits: EffectiveLimits) -> None:
    """Raises INVALID_REQUEST naming the first limit a container cannot be made with
    (backends/container/minimums.py); not INFRA_UNAVAILABLE from the engine, retried."""
    for name, value, minimum in below_container_minimums(dataclasses.asdict(limits)):
        raise InvalidRequest(
            f"limits.{name}={value} is below the container backend's minimum "
            f"{minimum.value}: {minimum.why}",
            field=f"limits.{name}",
            metadata={"limit": name, "minimum": str(minimum.value)},
        )


def _session_policy(request: Request, session: SessionEntry) -> Policy:
    if request.policy and request.policy != session.policy.name:
        raise InvalidRequest(
            f"session {session.id!r} runs under policy '{session.policy.name}', "
            f"not '{request.policy}'",
            field="policy",
        )
    if request.backend not in (None, Backend.AUTO, session.backend.kind):
        raise InvalidRequest(
            f"session {session.id!r} runs on {session.backend.kind.value}", field="backend"
        )
    return session.policy


def check_size(request: Request, policy: Policy) -> None:
    """Raises INVALID_REQUEST for empty code, or code or inputs larger than the policy takes."""
    if not request.code.strip():
        raise InvalidRequest("code is empty", field="code")
    size = len(request.code.encode("utf-8", "surrogatepass"))
    if size > policy.code_bytes:
        raise InvalidRequest(
            f"code is {size} bytes; policy '{policy.name}' accepts at most {policy.code_bytes}",
            field="code",
        )
    extra = request.inputs_size + len(request.stdin.encode("utf-8", "surrogatepass"))
    if extra > policy.inputs_bytes:
        raise InvalidRequest(
            f"inputs and stdin are {extra} bytes; policy '{policy.name}' accepts at most "
            f"{policy.inputs_bytes}",
            field="inputs_json",
        )


async def static_findings(
    request: Request, policy: Policy, checker: StaticChecker | None
) -> tuple[Violation, ...]:
    """What the policy's static rules need of the request's code, checked within the
    policy's budget. Raises INVALID_REQUEST (field `code`) for code that cannot be checked
    in time, THROTTLED when every checker stays busy that long."""
    fidelity = policy.fidelity_routing
    if checker is None:
        return findings(request.code, fidelity=fidelity)
    budget_s = policy.static_check_ms / 1000
    try:
        return await checker.findings(
            request.code, budget_s=budget_s, tenant=request.tenant, fidelity=fidelity
        )
    except CheckOverBudget:
        raise InvalidRequest(
            f"code is too complex to check within {budget_s:g} s (policy '{policy.name}' "
            "static_check_ms)",
            field="code",
            metadata={"limit": "static_check_ms", "limit_value": str(policy.static_check_ms)},
        ) from None
    except CheckerFailed as exc:
        raise InvalidRequest(f"code could not be checked: {exc}", field="code") from None
    except CheckersBusy:
        raise Throttled(
            f"every static checker stayed busy for {budget_s:g} s",
            field="code",
            retry_after_ms=policy.static_check_ms,
            metadata={"quota": "static_checkers"},
        ) from None


def violation(
    code: str, found: tuple[Violation, ...], policy: Policy, backend: Backend
) -> ExecutionResult | None:
    """A POLICY_VIOLATION result if `code` (whose static `found`ings these are) breaks the
    policy's static rules on `backend`."""
    denied = policy.denied_imports
    if backend is Backend.MONTY:
        denied = denied | policy.monty_denied_imports
    hit = first_violation(found, denied)
    if hit is None:
        return None
    lines = code.splitlines()
    source = lines[hit.line - 1].strip() if 0 < hit.line <= len(lines) else ""
    failure = Failure.of(
        FailureKind.POLICY_VIOLATION,
        f"{hit.describe()} '{policy.name}' (line {hit.line})",
        frames=(Frame(line=hit.line, column=hit.column, source_line=source),),
        details={"rule": hit.rule, "target": hit.target},
    )
    return ExecutionResult.failed(failure, backend=backend)


def new_execution_id() -> str:
    return "exe_" + os.urandom(16).hex()


def _check_tools(tools: tuple[ToolDecl, ...]) -> None:
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"at most {MAX_TOOLS} tools may be declared", field="tools")
    seen: set[str] = set()
    for tool in tools:
        if not tool.name.isidentifier() or len(tool.name) > _MAX_TOOL_NAME:
            raise InvalidRequest(
                f"tool name {tool.name!r} is not a Python identifier", field="tools"
            )
        if tool.name in seen:
            raise InvalidRequest(f"tool {tool.name!r} is declared twice", field="tools")
        seen.add(tool.name)
