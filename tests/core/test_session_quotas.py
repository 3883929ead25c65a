"""Session quotas through a real server: a tenant's sessions are counted under all its
policies together, against each policy's `sessions_per_tenant` and the tenants file's
`max_sessions` and `session_memory_bytes`; going over is THROTTLED naming the quota."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator

import pytest

from sandbox.access.tenants import Tenant, new_api_key
from sandbox_client import AsyncSandboxClient, FailureKind, Limits, RequestRefused, SandboxClient
from sandbox_client.protocol.models import Failure
from tests.conftest import ServerThread, running_server

MiB = 1024 * 1024
KEYS = {name: new_api_key() for name in ("cap", "mem", "other", "none")}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("quotas")
    (root / "policies").mkdir()
    (root / "policies" / "two.toml").write_text("sessions_per_tenant = 2\n")
    (root / "policies" / "three.toml").write_text("sessions_per_tenant = 3\n")
    (root / "policies" / "big.toml").write_text(f"memory_bytes = {512 * MiB}\n")

    def tenant(name: str, extra: str) -> str:
        return textwrap.dedent(f"""
            [tenants.{name}]
            api_key_sha256 = ["{KEYS[name][1]}"]
            allowed_policies = ["two", "three", "big"]
            default_policy = "three"
            rate_per_s = 10000
            burst = 10000
            max_concurrent = 50
        """) + textwrap.dedent(extra)

    (root / "tenants.toml").write_text(
        tenant("cap", f"max_sessions = 4\nsession_memory_bytes = {8192 * MiB}\n")
        + tenant("mem", f"session_memory_bytes = {300 * MiB}\n")
        + tenant("other", f"session_memory_bytes = {8192 * MiB}\n")
        + tenant("none", "max_sessions = 0\n")
    )
    with running_server(
        monty={"min_workers": 1, "max_workers": 12, "warm_sessions": 0},
        policies={"dir": root / "policies", "default": "three"},
        tenants={"file": root / "tenants.toml"},
    ) as srv:
        yield srv


def client(srv: ServerThread, tenant: str) -> SandboxClient:
    return SandboxClient(srv.address, api_key=KEYS[tenant][0], timeout_s=60)


def refusal(c: SandboxClient, **kwargs: object) -> Failure:
    with pytest.raises(RequestRefused) as refused:
        c.create_session(**kwargs)  # type: ignore[arg-type]
    failure = refused.value.failure
    assert isinstance(failure, Failure)
    return failure


def test_sessions_count_across_the_tenants_policies(server: ServerThread) -> None:
    with client(server, "other") as c:
        opened = [c.create_session(policy="three").session_id for _ in range(2)]
        # Two held under `three`: `two` (sessions_per_tenant = 2) opens no third for it,
        # though the tenant holds none under `two` itself.
        throttled = refusal(c, policy="two")
        assert throttled.kind is FailureKind.THROTTLED
        assert throttled.retry_after_ms > 0
        assert throttled.details["quota"] == "sessions_per_tenant"
        assert throttled.details["limit_value"] == "2"
        assert "under all its policies" in throttled.message
        opened.append(c.create_session(policy="three").session_id)  # 2 held, under 3
        assert refusal(c, policy="three").details["quota"] == "sessions_per_tenant"
        c.close_session(opened.pop())
        c.close_session(opened.pop())
        opened.append(c.create_session(policy="two").session_id)
        for session_id in opened:
            c.close_session(session_id)


def test_the_tenants_own_session_cap_holds_under_any_policy(server: ServerThread) -> None:
    with client(server, "cap") as c:
        opened = [c.create_session(policy="three").session_id for _ in range(3)]
        opened.append(c.create_session(policy="big").session_id)  # its policy allows 10
        throttled = refusal(c, policy="big")
        assert throttled.kind is FailureKind.THROTTLED
        assert throttled.details == {
            "field": "policy",
            "quota": "max_sessions",
            "limit_value": "4",
        }
        # Another tenant is not counted against it, and is served.
        with client(server, "other") as o:
            theirs = o.create_session(policy="big")
            assert o.execute("1 + 1", session_id=theirs.session_id).result == 2
            o.close_session(theirs.session_id)
        for session_id in opened:
            c.close_session(session_id)


def test_memory_held_by_sessions_is_a_quota(server: ServerThread) -> None:
    with client(server, "mem") as c:
        small = Limits(memory_bytes=128 * MiB)
        opened = [c.create_session(limits=small).session_id for _ in range(2)]
        throttled = refusal(c, limits=small)  # 256 MiB held + 128 > 300
        assert throttled.kind is FailureKind.THROTTLED
        assert throttled.details["quota"] == "session_memory_bytes"
        assert throttled.details["limit_value"] == str(300 * MiB)
        assert throttled.details["field"] == "limits.memory_bytes"
        # More than the whole quota can never fit: no point retrying.
        never = refusal(c, policy="big")
        assert never.kind is FailureKind.POLICY_VIOLATION
        assert never.details["quota"] == "session_memory_bytes"
        opened.append(c.create_session(limits=Limits(memory_bytes=40 * MiB)).session_id)
        for session_id in opened:
            c.close_session(session_id)
        opened = [c.create_session(limits=small).session_id for _ in range(2)]
        for session_id in opened:
            c.close_session(session_id)


def test_a_tenant_with_no_sessions_is_refused_outright(server: ServerThread) -> None:
    with client(server, "none") as c:
        failure = refusal(c)
        assert failure.kind is FailureKind.POLICY_VIOLATION
        assert failure.details["quota"] == "max_sessions"


async def test_concurrent_creations_cannot_slip_past_the_cap(server: ServerThread) -> None:
    async with AsyncSandboxClient(server.address, api_key=KEYS["cap"][0], timeout_s=60) as c:
        outcomes = await asyncio.gather(
            *(c.create_session(policy="three") for _ in range(8)), return_exceptions=True
        )
        opened = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, RequestRefused)]
        assert len(opened) == 3 and len(refused) == 5, outcomes
        assert all(r.failure.kind is FailureKind.THROTTLED for r in refused)
        for session in opened:
            await c.close_session(session.session_id)


def test_the_tenants_file_states_its_defaults() -> None:
    tenant = Tenant(name="t")
    assert tenant.max_sessions == 8
    assert tenant.session_memory_bytes == 1024 * MiB
