"""Tenants against a real server on loopback: API keys, policy access, session isolation,
quotas under a burst of 200 requests, key rotation by reload, clamping, the bind rule,
policy reload, and the metrics endpoint."""

from __future__ import annotations

import asyncio
import textwrap
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.access.tenants import new_api_key
from sandbox.app import SandboxServer
from sandbox.config import ServerSettings, Settings
from sandbox.errors import ConfigError
from sandbox_client import AsyncSandboxClient, FailureKind, Limits, SandboxClient, SandboxError
from tests.conftest import ServerThread, running_server
from tests.conftest import test_settings as make_settings

KEY_A, DIGEST_A = new_api_key()
KEY_B, DIGEST_B = new_api_key()
KEY_BURST, DIGEST_BURST = new_api_key()
KEY_NARROW, DIGEST_NARROW = new_api_key()

# About 30-80 ms of Monty work, so concurrent calls overlap.
SLOW = "t = 0\nfor i in range(300000):\n    t += i\nt"


def tenants_toml(a_digests: list[str]) -> str:
    quoted = ", ".join(f'"{d}"' for d in a_digests)
    return textwrap.dedent(f"""
        [tenants.a]
        api_key_sha256 = [{quoted}]
        allowed_policies = ["default", "alpha", "shared-b-only"]
        default_policy = "alpha"
        rate_per_s = 1000
        burst = 1000
        max_concurrent = 50

        [tenants.b]
        api_key_sha256 = ["{DIGEST_B}"]
        allowed_policies = ["default", "shared-b-only"]
        rate_per_s = 1000
        burst = 1000
        max_concurrent = 50

        [tenants.burst]
        api_key_sha256 = ["{DIGEST_BURST}"]
        rate_per_s = 10
        burst = 20
        max_concurrent = 200

        [tenants.narrow]
        api_key_sha256 = ["{DIGEST_NARROW}"]
        rate_per_s = 10000
        burst = 10000
        max_concurrent = 3
    """)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tenants")
    policies = root / "policies"
    policies.mkdir()
    (policies / "alpha.toml").write_text('memory_bytes = 67_108_864\ntenants = ["a"]\n')
    # Open only to tenant b, though tenant a lists it among its own allowed policies.
    (policies / "shared-b-only.toml").write_text('tenants = ["b"]\n')
    (root / "tenants.toml").write_text(tenants_toml([DIGEST_A]))
    return root


@pytest.fixture(scope="module")
def tserver(config_dir: Path) -> Iterator[ServerThread]:
    with running_server(
        tenants={"file": config_dir / "tenants.toml"},
        policies={"dir": config_dir / "policies", "reload_poll_s": 0.1},
        metrics={"port": 0},
    ) as srv:
        yield srv


def client(srv: ServerThread, key: str | None) -> SandboxClient:
    return SandboxClient(srv.address, timeout_s=60, api_key=key)


def test_requests_without_a_valid_key_are_refused(tserver: ServerThread) -> None:
    with client(tserver, None) as anonymous:
        result = anonymous.execute("1+1")
    assert result.failure is not None
    assert result.failure.details.get("grpc_code", "UNAUTHENTICATED") == "UNAUTHENTICATED"
    assert "requires an API key" in result.failure.message
    with client(tserver, "sbx_not-a-key") as wrong:
        result = wrong.execute("1+1")
    assert result.failure is not None and "unknown or revoked" in result.failure.message


def test_tenant_default_policy_and_allowed_policies(tserver: ServerThread) -> None:
    with client(tserver, KEY_A) as a, client(tserver, KEY_B) as b:
        assert a.execute("1+1").policy_name == "alpha"  # a's own default
        assert b.execute("1+1").policy_name == "default"
        refused = b.execute("1+1", policy="alpha")
        assert refused.failure is not None
        assert refused.failure.kind is FailureKind.POLICY_VIOLATION
        assert "may not use policy 'alpha'" in refused.failure.message
        # a lists shared-b-only, but the policy itself is open to b only.
        closed = a.execute("1+1", policy="shared-b-only")
        assert closed.failure is not None
        assert closed.failure.kind is FailureKind.POLICY_VIOLATION
        assert "not open to tenant 'a'" in closed.failure.message
        assert b.execute("1+1", policy="shared-b-only").ok


def test_tenant_b_cannot_use_or_close_tenant_a_session(tserver: ServerThread) -> None:
    with client(tserver, KEY_A) as a, client(tserver, KEY_B) as b:
        session = a.create_session(policy="default")
        assert a.execute("x = 41", session_id=session.session_id).ok
        stolen = b.execute("x", session_id=session.session_id)
        assert stolen.failure is not None
        assert stolen.failure.kind is FailureKind.INVALID_REQUEST
        assert f"unknown session {session.session_id!r}" in stolen.failure.message
        with pytest.raises(SandboxError) as closing:
            b.close_session(session.session_id)
        assert "unknown session" in closing.value.failure.message
        b_session = b.create_session(policy="default")
        with pytest.raises(SandboxError):
            a.close_session(b_session.session_id)
        # a's session is untouched by all that.
        assert a.execute("x + 1", session_id=session.session_id).result_json == "42"
        a.close_session(session.session_id)
        b.close_session(b_session.session_id)


def test_clamping_names_the_field_and_the_ceiling(tserver: ServerThread) -> None:
    with client(tserver, KEY_A) as a:
        result = a.execute("1+1", limits=Limits(memory_bytes=128 * 1024 * 1024))
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.POLICY_VIOLATION
    assert failure.details["field"] == "limits.memory_bytes"
    assert failure.details["limit"] == "memory_bytes"
    assert failure.details["limit_value"] == str(64 * 1024 * 1024)  # alpha's ceiling
    with client(tserver, KEY_A) as a:
        assert a.execute("1+1", limits=Limits(memory_bytes=32 * 1024 * 1024)).ok


async def _burst(srv: ServerThread, key: str, code: str, n: int = 200) -> list[object]:
    async with AsyncSandboxClient(srv.address, timeout_s=120, api_key=key) as c:
        return list(await asyncio.gather(*(c.execute(code) for _ in range(n))))


def test_rate_limit_under_a_burst_of_200(tserver: ServerThread) -> None:
    started = time.monotonic()
    results = asyncio.run(_burst(tserver, KEY_BURST, "1+1"))
    elapsed = time.monotonic() - started
    kinds = Counter(r.failure.kind.value if r.failure else "OK" for r in results)  # type: ignore[attr-defined]
    # burst 20, then 10/s: at most 20 + 10 per second the burst took (and a little slack).
    assert 20 <= kinds["OK"] <= 20 + 10 * elapsed + 2, (kinds, elapsed)
    assert kinds["THROTTLED"] == 200 - kinds["OK"], kinds
    for r in results:
        f = r.failure  # type: ignore[attr-defined]
        if f is not None:
            assert f.retryable and 0 < f.retry_after_ms <= 100
            assert f.details["quota"] == "rate_per_s"
    print(f"rate burst: {dict(kinds)} in {elapsed:.2f} s")


def test_concurrency_limit_under_a_burst_of_200(tserver: ServerThread) -> None:
    results = asyncio.run(_burst(tserver, KEY_NARROW, SLOW))
    kinds = Counter(r.failure.kind.value if r.failure else "OK" for r in results)  # type: ignore[attr-defined]
    assert kinds["OK"] >= 3 and kinds["THROTTLED"] > 0, kinds
    assert set(kinds) == {"OK", "THROTTLED"}, kinds
    assert tserver.server.access.peak_concurrency("narrow") == 3
    for r in results:
        f = r.failure  # type: ignore[attr-defined]
        if f is not None:
            assert f.retry_after_ms == 100 and f.details["quota"] == "max_concurrent"
    print(f"concurrency burst: {dict(kinds)}")


def _wait_for(predicate: object, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_key_rotation_by_editing_the_tenants_file(tserver: ServerThread, config_dir: Path) -> None:
    tenants = config_dir / "tenants.toml"
    new_key, new_digest = new_api_key()

    def works(key: str) -> bool:
        with client(tserver, key) as c:
            return c.execute("1+1").ok

    try:
        # Both keys during the rotation...
        tenants.write_text(tenants_toml([DIGEST_A, new_digest]))
        _wait_for(lambda: works(new_key))
        assert works(KEY_A)
        # ...then the old one is revoked.
        tenants.write_text(tenants_toml([new_digest]))
        _wait_for(lambda: not works(KEY_A))
        assert works(new_key)
        # A broken tenants file keeps the last good one.
        tenants.write_text("[tenants.a]\napi_key_sha256 = ['not a digest']\n")
        time.sleep(0.5)
        assert works(new_key)
    finally:
        tenants.write_text(tenants_toml([DIGEST_A]))
        _wait_for(lambda: works(KEY_A))


def test_policy_reload_on_file_change_keeps_last_good(
    tserver: ServerThread, config_dir: Path
) -> None:
    alpha = config_dir / "policies" / "alpha.toml"
    original = alpha.read_text()

    def wall_ms() -> int:
        return tserver.server.executor.policies.get("alpha").wall_time_ms

    try:
        alpha.write_text(original + "wall_time_ms = 1234\n")
        _wait_for(lambda: wall_ms() == 1234)
        alpha.write_text(original + "wall_time_ms = 'soon'\n")  # broken: keeps 1234
        time.sleep(0.5)
        assert wall_ms() == 1234
        with client(tserver, KEY_A) as a:
            assert a.execute("1+1", policy="alpha").ok
    finally:
        alpha.write_text(original)
        _wait_for(lambda: wall_ms() == 10_000)


def test_metrics_endpoint_counts_by_backend_kind_and_tenant(tserver: ServerThread) -> None:
    with client(tserver, KEY_B) as b:
        assert b.execute("1+1", backend="monty").ok
        b.execute("1/0", backend="monty")
    port = tserver.server.metrics.port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'sandbox_executions_total{backend="monty",kind="OK",tenant="b"}' in text
    assert 'sandbox_executions_total{backend="monty",kind="RUNTIME_ERROR",tenant="b"}' in text
    assert "sandbox_execution_duration_seconds_bucket" in text
    assert (
        'sandbox_requests_refused_total{grpc_code="UNAUTHENTICATED",kind="INVALID_REQUEST",'
        'tenant=""}'
    ) in text


def test_non_loopback_bind_is_refused_without_credentials(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without credentials configured"):
        Settings(server=ServerSettings(host="0.0.0.0")).check_bind()
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0"):
        SandboxServer(make_settings(server={"host": "0.0.0.0"}))
    # A tenants file that defines no tenant is no credential either.
    empty = tmp_path / "tenants.toml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="without credentials"):
        SandboxServer(make_settings(server={"host": "0.0.0.0"}, tenants={"file": empty}))
    Settings(server=ServerSettings(host="127.0.0.1")).check_bind()
    Settings(server=ServerSettings(host="::1")).check_bind()


def test_non_loopback_bind_with_tenants_serves(config_dir: Path) -> None:
    settings = make_settings(
        server={"host": "0.0.0.0"}, tenants={"file": config_dir / "tenants.toml"}
    )
    with ServerThread(settings) as srv:
        with client(srv, KEY_B) as b:
            assert b.execute("1+1").ok
        with client(srv, None) as anonymous:
            assert not anonymous.execute("1+1").ok
