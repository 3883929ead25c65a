"""Container slots under the quotas and the tool-wait deadline: a container tool run
whose calls nobody answers ends on its own and frees its slot, and with every container
slot and session one tenant's quotas allow held, another tenant's container runs are
still served (the Monty half of this is tests/access/test_no_starvation.py)."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator

import docker
import pytest

from sandbox.access.tenants import new_api_key
from sandbox_client import FailureKind, RequestRefused, SandboxClient
from tests.backends.container.conftest import IMAGE, SCOPE
from tests.conftest import ServerThread, running_server
from tests.edge.test_run_stream import RawRun, value_answer

pytestmark = pytest.mark.docker

KEYS = {name: new_api_key() for name in ("a", "b")}
WAIT_MS = 1500
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(
    engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("container-quotas")
    (root / "policies").mkdir()
    (root / "policies" / "default.toml").write_text(f"tool_wait_ms = {WAIT_MS}\n")
    (root / "policies" / "patient.toml").write_text("tool_wait_ms = 600000\n")
    tenants = ""
    for name, quota in (
        ("a", f"max_concurrent = 2\nmax_sessions = 1\nsession_memory_bytes = {256 * MiB}\n"),
        ("b", "max_concurrent = 4\n"),
    ):
        tenants += textwrap.dedent(f"""
            [tenants.{name}]
            api_key_sha256 = ["{KEYS[name][1]}"]
            allowed_policies = ["default", "patient"]
            rate_per_s = 1000
            burst = 1000
        """) + textwrap.dedent(quota)
    (root / "tenants.toml").write_text(tenants)
    with running_server(
        container={
            "enabled": True,
            "image": IMAGE,
            "pool_size": 1,
            "max_concurrency": 3,  # a's share is 2 of them
            "queue_timeout_s": 20,
            "scope": SCOPE,
        },
        policies={"dir": root / "policies"},
        tenants={"file": root / "tenants.toml"},
    ) as srv:
        yield srv


def metadata(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEYS[tenant][0]}"),)


def test_an_unanswered_call_in_a_container_raises_timeout_error(server: ServerThread) -> None:
    code = (
        "try:\n    lookup(1)\nexcept TimeoutError as e:\n    r = ('caught', str(e))\n"
        "try:\n    lookup(2)\nexcept TimeoutError as e:\n    r2 = str(e)\n"
        "[r[0], r[1], r2]"
    )
    run = RawRun(server.address, code, ["lookup"], metadata=metadata("b"), backend="container")
    with run:
        run.wait()
    assert run.result is not None and run.result.ok, run.result.failure if run.result else run.error
    caught, message, again = run.result.result
    assert caught == "caught" and f"no answer within {WAIT_MS / 1000:g} s" in message
    assert "unanswered" in again and len(run.calls) == 1
    uncaught = RawRun(
        server.address, "lookup(1)", ["lookup"], metadata=metadata("b"), backend="container"
    )
    with uncaught:
        uncaught.wait()
    assert uncaught.result is not None and uncaught.result.failure is not None
    assert uncaught.result.failure.kind is FailureKind.TOOL_ERROR
    assert "lookup" in uncaught.result.failure.message


def test_with_a_tenants_container_quota_held_another_is_served(server: ServerThread) -> None:
    held: list[RawRun] = []
    try:
        with SandboxClient(server.address, api_key=KEYS["a"][0], timeout_s=120) as a:
            session = a.create_session(backend="container")
            with pytest.raises(RequestRefused) as more:
                a.create_session(backend="container")
            assert more.value.failure.details["quota"] in ("max_sessions", "session_memory_bytes")
            for _ in range(2):  # a's two executions: container tool runs nobody answers
                held.append(
                    RawRun(
                        server.address,
                        "lookup(1)",
                        ["lookup"],
                        metadata=metadata("a"),
                        backend="container",
                        policy="patient",
                        timeout_s=180,
                    ).__enter__()
                )
            deadline = time.monotonic() + 120
            while sum(len(r.calls) for r in held) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [len(r.calls) for r in held] == [1, 1]  # each holds a container slot
            throttled = a.execute("1", backend="container")
            assert throttled.failure is not None
            assert throttled.failure.details.get("quota") == "max_concurrent"

            with SandboxClient(server.address, api_key=KEYS["b"][0], timeout_s=120) as b:
                started = time.monotonic()
                result = b.execute("print(1)", backend="container")
                assert result.ok and result.stdout == "1\n", result.failure
                assert time.monotonic() - started < 15  # served, not queued behind a
                answered = RawRun(
                    server.address,
                    "lookup(20) + 1",
                    ["lookup"],
                    metadata=metadata("b"),
                    backend="container",
                    answer=value_answer("41"),
                )
                with answered:
                    answered.wait()
                assert answered.result is not None and answered.result.result == 42
            a.close_session(session.session_id)
    finally:
        for run in held:
            run.__exit__()
