"""core.plan on its own: no server, no backend; policies, tenants and sessions in memory."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import pytest

from sandbox.access.tenants import Access, Tenant, TenantRegistry
from sandbox.config import SessionSettings
from sandbox.core.plan import MAX_TOOLS, Context, plan
from sandbox.core.request import Request, ToolDecl
from sandbox.core.sessions import SessionEntry, SessionRegistry
from sandbox.errors import InvalidRequest, NotEnabled, NotFound, PolicyDenied
from sandbox.policy.model import Policy, PolicyRegistry
from sandbox_client.protocol.models import Backend, FailureKind, Limits

MONTY_ONLY = frozenset({Backend.MONTY})
BOTH = frozenset({Backend.MONTY, Backend.CONTAINER})


def context(
    *policies: Policy, tenants: list[Tenant] | None = None, available: frozenset[Backend] = BOTH
) -> Context:
    known = {p.name: p for p in (Policy(name="default"), *policies)}
    access = Access(TenantRegistry(tenants) if tenants is not None else None)
    return Context(
        PolicyRegistry(known, "default"),
        access,
        SessionRegistry(SessionSettings(max_open=10, idle_timeout_s=60)),
        available,
    )


async def test_auto_is_monty_then_a_container_when_both_allow() -> None:
    decided = await plan(Request(code="1"), context())
    assert decided.steps == (Backend.MONTY, Backend.CONTAINER)
    assert decided.refusal is None and decided.execution_id.startswith("exe_")


async def test_auto_stays_in_monty_without_fallback_or_without_containers() -> None:
    no_fallback = Policy(name="p", allow_fallback=False)
    assert (await plan(Request(code="1", policy="p"), context(no_fallback))).steps == (
        Backend.MONTY,
    )
    assert (await plan(Request(code="1"), context(available=MONTY_ONLY))).steps == (Backend.MONTY,)


async def test_an_explicit_backend_is_the_only_step() -> None:
    ctx = context()
    assert (await plan(Request(code="1", backend=Backend.MONTY), ctx)).steps == (Backend.MONTY,)
    assert (await plan(Request(code="1", backend=Backend.CONTAINER), ctx)).steps == (
        Backend.CONTAINER,
    )


async def test_a_backend_the_policy_does_not_allow_is_refused_before_one_the_server_lacks() -> None:
    monty_only = Policy(name="p", backends=frozenset({Backend.MONTY}))
    with pytest.raises(PolicyDenied) as denied:
        await plan(Request(code="1", policy="p", backend=Backend.CONTAINER), context(monty_only))
    assert denied.value.field == "backend"
    with pytest.raises(NotEnabled) as lacking:
        await plan(Request(code="1", backend=Backend.CONTAINER), context(available=MONTY_ONLY))
    # A configuration fact, not a passing outage: not retryable, and it says how to enable.
    assert lacking.value.status is grpc.StatusCode.FAILED_PRECONDITION
    assert lacking.value.kind is FailureKind.INVALID_REQUEST
    assert "[container] enabled = true" in str(lacking.value)


async def test_code_denied_in_monty_only_moves_to_the_container() -> None:
    decided = await plan(Request(code="import os\n1"), context())
    assert decided.steps == (Backend.CONTAINER,) and decided.fallback_from is Backend.MONTY
    assert decided.refusal is None


async def test_code_denied_everywhere_is_refused_with_its_line() -> None:
    decided = await plan(Request(code="x = 1\nimport ctypes"), context())
    assert decided.refusal is not None and decided.refusal.failure is not None
    assert decided.refusal.failure.kind is FailureKind.POLICY_VIOLATION
    assert decided.refusal.failure.line == 2


async def test_code_denied_in_monty_without_a_container_is_refused() -> None:
    decided = await plan(Request(code="import os"), context(available=MONTY_ONLY))
    assert decided.refusal is not None and decided.refusal.backend is Backend.MONTY


async def test_both_tenant_lists_must_allow_the_policy() -> None:
    only_a = Policy(name="only-a", tenants=frozenset({"a"}))
    tenants = [
        Tenant(name="a", allowed_policies=frozenset({"default", "only-a"})),
        Tenant(name="b", allowed_policies=frozenset({"default", "only-a"})),
        Tenant(name="c", allowed_policies=frozenset({"default"})),
    ]
    ctx = context(only_a, tenants=tenants)
    assert (await plan(Request(code="1", policy="only-a", tenant="a"), ctx)).policy.name == "only-a"
    with pytest.raises(PolicyDenied, match="not open to tenant 'b'"):
        await plan(Request(code="1", policy="only-a", tenant="b"), ctx)
    with pytest.raises(PolicyDenied, match="may not use policy 'only-a'"):
        await plan(Request(code="1", policy="only-a", tenant="c"), ctx)


async def test_the_same_rules_hold_for_tool_runs() -> None:
    only_a = Policy(name="only-a", tenants=frozenset({"a"}))
    b = Tenant(name="b", allowed_policies=frozenset({"only-a"}), default_policy="only-a")
    ctx = context(only_a, tenants=[b])
    with pytest.raises(PolicyDenied):
        await plan(Request(code="1", policy="only-a", tenant="b", tools=()), ctx)


async def test_limits_are_clamped_and_asking_for_more_names_the_field() -> None:
    ctx = context(Policy(name="p", memory_bytes=1000))
    decided = await plan(Request(code="1", policy="p", limits=Limits(memory_bytes=10)), ctx)
    assert decided.limits.memory_bytes == 10
    with pytest.raises(PolicyDenied) as over:
        await plan(Request(code="1", policy="p", limits=Limits(memory_bytes=2000)), ctx)
    assert over.value.field == "limits.memory_bytes"
    assert over.value.metadata["limit_value"] == "1000"


@pytest.mark.parametrize(
    ("request_", "field_"),
    [
        (Request(code=" \n"), "code"),
        (Request(code="x" * 300_000), "code"),
        (Request(code="1", stdin="x" * 2_000_000), "inputs_json"),
        (Request(code="1", policy="nope"), "policy"),
        (Request(code="1", tools=(ToolDecl(name="not an identifier"),)), "tools"),
        (Request(code="1", tools=(ToolDecl(name="t"), ToolDecl(name="t"))), "tools"),
        (
            Request(code="1", tools=tuple(ToolDecl(name=f"t{i}") for i in range(MAX_TOOLS + 1))),
            "tools",
        ),
        (Request(code="1", tools=(), session_id="ses_x"), "session_id"),
        (Request(code="1", session_id="ses_unknown"), "session_id"),
    ],
)
async def test_malformed_requests_are_refused_naming_the_field(
    request_: Request, field_: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await plan(request_, context())
    assert refused.value.field == field_


async def test_an_unknown_policy_is_not_found() -> None:
    with pytest.raises(NotFound):
        await plan(Request(code="1", policy="nope"), context())


@dataclass
class _Handle:
    alive: bool = True


@dataclass
class _Backend:
    kind: Backend = Backend.MONTY
    opened: list[object] = field(default_factory=list)

    async def open_session(self, limits: object) -> _Handle:
        return _Handle()


async def test_a_session_request_runs_on_the_session_with_its_policy_and_limits() -> None:
    ctx = context(Policy(name="p"))
    policy = ctx.policies.get("p")
    entry: SessionEntry = await ctx.sessions.create(
        _Backend(),  # type: ignore[arg-type]
        policy,
        policy.limits(),
        tenant="local",
    )
    decided = await plan(Request(code="1", session_id=entry.id), ctx)
    assert decided.session is entry and decided.steps == (Backend.MONTY,)
    assert decided.policy is policy
    with pytest.raises(InvalidRequest, match="limits are fixed"):
        await plan(Request(code="1", session_id=entry.id, limits=Limits(memory_bytes=1)), ctx)
    with pytest.raises(InvalidRequest, match="runs under policy"):
        await plan(Request(code="1", session_id=entry.id, policy="default"), ctx)
    with pytest.raises(NotFound):
        await plan(Request(code="1", session_id=entry.id, tenant="someone-else"), ctx)
