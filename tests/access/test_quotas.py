"""A tenant's rate and concurrency quotas (access.tenants.Access) with a fake clock."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from sandbox.access.tenants import Access, Tenant, TenantRegistry, key_digest
from sandbox.app import warn_about_shares
from sandbox.config import Settings
from sandbox.errors import Throttled, Unauthenticated


def access(**quota: float) -> tuple[Access, list[float]]:
    now = [0.0]
    tenant = Tenant(name="t", api_key_sha256=(key_digest("sbx_key"),), **quota)  # type: ignore[arg-type]
    return Access(TenantRegistry([tenant]), clock=lambda: now[0]), now


def test_a_burst_then_the_rate_with_the_wait_named() -> None:
    quotas, now = access(rate_per_s=10, burst=3, max_concurrent=100)
    for _ in range(3):
        quotas.acquire("t")
        quotas.release("t")
    with pytest.raises(Throttled) as throttled:
        quotas.acquire("t")
    assert throttled.value.retry_after_ms == 100
    assert throttled.value.metadata["quota"] == "rate_per_s"
    now[0] += 0.1
    quotas.acquire("t")


def test_concurrency_is_held_until_released() -> None:
    quotas, _ = access(rate_per_s=1000, burst=1000, max_concurrent=2)
    quotas.acquire("t")
    quotas.acquire("t")
    with pytest.raises(Throttled) as throttled:
        quotas.acquire("t")
    assert throttled.value.metadata["quota"] == "max_concurrent"
    quotas.release("t")
    quotas.acquire("t")
    assert quotas.peak_concurrency("t") == 2


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "sbx_key"),),
        (("authorization", "Bearer "),),
        (("authorization", "Basic sbx_key"),),
        (("authorization", "Bearer sbx_wrong"),),
    ],
)
def test_credentials_that_do_not_name_a_tenant_are_refused(
    metadata: tuple[tuple[str, str], ...],
) -> None:
    quotas, _ = access()
    with pytest.raises(Unauthenticated):
        quotas.authenticate(metadata, [])


def test_a_valid_key_names_its_tenant() -> None:
    quotas, _ = access()
    assert quotas.authenticate((("authorization", "Bearer sbx_key"),), []) == "t"


def test_a_tenant_whose_quotas_cover_every_worker_is_logged_at_start() -> None:
    settings = Settings(
        monty={"max_workers": 8, "warm_sessions": 1},
        container={"max_concurrency": 4},
    )
    tenants = [
        Tenant(name="modest", max_concurrent=2, max_sessions=3),
        Tenant(name="greedy", max_concurrent=4, max_sessions=3),
    ]
    with capture_logs() as logs:
        warn_about_shares(settings, Access(TenantRegistry(tenants)), containers=True)
    assert [(e["event"], e["tenant"]) for e in logs] == [
        ("a tenant's quotas cover every Monty worker", "greedy"),
        ("a tenant's quotas cover every container slot", "greedy"),
    ]
