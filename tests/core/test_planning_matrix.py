"""Every RPC that runs code decides the same way: the same policy x tenant x backend x
code matrix through Execute, ExecuteStream and Run against one real server (tenants,
policy files, Monty only) must give identical decisions, refused or run."""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandbox.access.tenants import new_api_key
from sandbox_client.protocol.convert import backend_to_proto, failure_from_status, result_from_proto
from sandbox_client.protocol.models import Backend
from sandbox_client.protocol.service import ServiceStub
from sandbox_client.protocol.v1 import sandbox_pb2
from tests.conftest import ServerThread, running_server

KEYS = {name: new_api_key() for name in ("a", "b")}

POLICIES = {
    "open": "",
    # Tenant b lists it among its own allowed policies, but the policy is not open to b.
    "only-a": 'tenants = ["a"]\n',
    "monty-only": 'backends = ["auto", "monty"]\nallow_fallback = false\n',
    "no-auto": 'backends = ["monty"]\n',
}
TENANTS = {
    "a": ["open", "only-a", "monty-only", "no-auto"],
    "b": ["open", "only-a", "monty-only"],
}
CODES = {
    "plain": "1 + 1",
    "denied-in-monty": "import os\n1",
    "denied-everywhere": "import ctypes\n1",
    "unsupported-in-monty": "import zipfile\n1",
    "empty": "   ",
}
BACKENDS = [Backend.AUTO, Backend.MONTY, Backend.CONTAINER, None]
RPCS = ["Execute", "ExecuteStream", "Run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("matrix")
    (root / "policies").mkdir()
    for name, body in POLICIES.items():
        (root / "policies" / f"{name}.toml").write_text(body)
    tenants = ""
    for tenant, allowed in TENANTS.items():
        quoted = ", ".join(f'"{p}"' for p in allowed)
        tenants += textwrap.dedent(f"""
            [tenants.{tenant}]
            api_key_sha256 = ["{KEYS[tenant][1]}"]
            allowed_policies = [{quoted}]
            default_policy = "open"
            rate_per_s = 100000
            burst = 100000
            max_concurrent = 100
        """)
    (root / "tenants.toml").write_text(tenants)
    with running_server(
        policies={"dir": root / "policies", "default": "open"},
        tenants={"file": root / "tenants.toml"},
    ) as srv:
        yield srv


def decide(
    stub: Any, rpc: str, tenant: str, request: sandbox_pb2.ExecuteRequest
) -> tuple[Any, ...]:
    """What the server decided: the refusal's kind and field, or where and how it ran."""
    metadata = (("authorization", f"Bearer {KEYS[tenant][0]}"),)
    try:
        if rpc == "Execute":
            result = stub.Execute(request, metadata=metadata, timeout=30).result
        elif rpc == "ExecuteStream":
            events = list(
                stub.ExecuteStream(
                    sandbox_pb2.ExecuteStreamRequest(request=request), metadata=metadata, timeout=30
                )
            )
            result = events[-1].result
        else:
            start = sandbox_pb2.RunRequest(start=sandbox_pb2.RunStart(request=request))
            events = list(stub.Run(iter([start]), metadata=metadata, timeout=30))
            result = events[-1].result
    except grpc.RpcError as error:
        call: Any = error
        failure = failure_from_status(call.code(), call.details(), call.trailing_metadata())
        return ("refused", failure.kind.value, failure.details.get("field", ""), failure.message)
    ran = result_from_proto(result)
    return (
        "ran",
        ran.backend,
        ran.fallback_from,
        ran.failure.kind.value if ran.failure else "OK",
        ran.policy_name,
        ran.policy_digest != "",
    )


CASES = list(itertools.product(TENANTS, [*POLICIES, ""], BACKENDS, CODES))


@pytest.mark.parametrize(("tenant", "policy", "backend", "code"), CASES)
def test_every_rpc_decides_alike(
    server: ServerThread, tenant: str, policy: str, backend: Backend | None, code: str
) -> None:
    request = sandbox_pb2.ExecuteRequest(
        code=CODES[code], policy=policy, backend=backend_to_proto(backend)
    )
    with grpc.insecure_channel(server.address) as channel:
        stub = ServiceStub(channel)
        decisions = {rpc: decide(stub, rpc, tenant, request) for rpc in RPCS}
    assert decisions["ExecuteStream"] == decisions["Execute"], decisions
    assert decisions["Run"] == decisions["Execute"], decisions


def test_the_matrix_covers_refusals_and_runs(server: ServerThread) -> None:
    """The matrix above is only worth its cases if they reach every decision."""
    seen: set[tuple[str, str]] = set()
    with grpc.insecure_channel(server.address) as channel:
        stub = ServiceStub(channel)
        for tenant, policy, backend, code in CASES[::3]:
            request = sandbox_pb2.ExecuteRequest(
                code=CODES[code], policy=policy, backend=backend_to_proto(backend)
            )
            decision = decide(stub, "Execute", tenant, request)
            seen.add((decision[0], str(decision[1] if decision[0] == "refused" else decision[3])))
    assert {
        ("refused", "POLICY_VIOLATION"),
        ("refused", "INVALID_REQUEST"),
        ("ran", "OK"),
        ("ran", "POLICY_VIOLATION"),
        ("ran", "UNSUPPORTED"),
    } <= seen, seen


def test_a_tool_run_is_refused_a_policy_not_open_to_its_tenant(server: ServerThread) -> None:
    """The gap this matrix closed: `Run` used to run tool code under a policy whose own
    `tenants` list excludes the caller, while Execute refused it."""
    request = sandbox_pb2.ExecuteRequest(code="1 + 1", policy="only-a")
    with grpc.insecure_channel(server.address) as channel:
        stub = ServiceStub(channel)
        refused = decide(stub, "Run", "b", request)
        allowed = decide(stub, "Run", "a", request)
    assert refused[:3] == ("refused", "POLICY_VIOLATION", "policy")
    assert "not open to tenant 'b'" in refused[3]
    assert allowed[0] == "ran" and allowed[3] == "OK"


def test_policy_files_in_this_module_parse(tmp_path: Path) -> None:
    from sandbox.policy.files import load_policy_dir
    from sandbox.policy.model import ServerMaximums

    for name, body in POLICIES.items():
        (tmp_path / f"{name}.toml").write_text(body)
    policies, problems = load_policy_dir(tmp_path, ServerMaximums())
    assert not [p for p in problems if p.severity == "error"]
    assert set(policies) >= set(POLICIES)
