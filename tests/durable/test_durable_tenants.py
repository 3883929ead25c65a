"""Tool runs at the edge: authenticated and audited like Execute, journaled per tenant."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.access.tenants import new_api_key
from sandbox.audit.log import log_files
from sandbox_client import ExecutionResult, FailureKind, SandboxClient
from tests.conftest import ServerThread, running_server

KEY_A, DIGEST_A = new_api_key()
KEY_B, DIGEST_B = new_api_key()


@pytest.fixture(scope="module")
def tserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tenants = tmp_path_factory.mktemp("durable-tenants") / "tenants.toml"
    tenants.write_text(
        textwrap.dedent(f"""
        [tenants.a]
        api_key_sha256 = ["{DIGEST_A}"]
        [tenants.b]
        api_key_sha256 = ["{DIGEST_B}"]
        """)
    )
    with running_server(tenants={"file": tenants}) as srv:
        yield srv


def test_a_tool_run_without_credentials_is_refused(tserver: ServerThread) -> None:
    called = []
    with SandboxClient(tserver.address, timeout_s=30) as anonymous:
        result = anonymous.run_tools("ping()", tools={"ping": lambda: called.append(1)})
    assert result.failure is not None and result.failure.grpc_code == "UNAUTHENTICATED"
    assert called == []


def test_the_same_key_under_two_tenants_is_two_executions(tserver: ServerThread) -> None:
    answers = {"a": 0, "b": 0}

    def run_as(api_key: str, who: str, code: str) -> ExecutionResult:
        def whoami() -> str:
            answers[who] += 1
            return who

        with SandboxClient(tserver.address, timeout_s=30, api_key=api_key) as c:
            return c.run_tools(code, tools={"whoami": whoami}, idempotency_key="shared-key")

    a = run_as(KEY_A, "a", "whoami()")
    b = run_as(KEY_B, "b", "[whoami()]")  # other code: no conflict across tenants
    again = run_as(KEY_A, "a", "whoami()")
    assert a.result == "a" and b.result == ["b"]
    assert again.replayed and answers == {"a": 1, "b": 1}
    conflict = run_as(KEY_B, "b", "whoami()")
    assert conflict.failure is not None
    assert conflict.failure.kind is FailureKind.INVALID_REQUEST


def test_tool_runs_are_audited(tmp_path: Path) -> None:
    with running_server(audit={"dir": tmp_path / "audit"}) as srv:
        with SandboxClient(srv.address, timeout_s=30) as c:
            done = c.run_tools("ping()", tools={"ping": lambda: 1}, idempotency_key="k-audit")
            again = c.run_tools("ping()", tools={"ping": lambda: 1}, idempotency_key="k-audit")
        assert done.ok and again.replayed
        assert srv.server.audit is not None
        srv.server.audit.flush()
    (log,) = log_files(tmp_path / "audit")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    runs = [r for r in records if r.get("method") == "Run"]
    assert len(runs) == 2
