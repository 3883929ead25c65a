"""Garbage in: nothing a caller sends crashes the server. Every request ends in a
classified result or INVALID_REQUEST, and the server keeps serving."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox_client import FailureKind, SandboxClient
from sandbox_client.protocol.v1 import sandbox_pb2
from tests.conftest import ServerThread

EXECUTE = "/sandbox.v1.SandboxService/Execute"
KNOWN_KINDS = set(FailureKind)
hypothesis_settings = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def raw_execute(server: ServerThread, payload: bytes) -> tuple[grpc.StatusCode, bytes | None]:
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(EXECUTE)
        try:
            reply = call(payload, timeout=30)
        except grpc.RpcError as error:
            return error.code(), None  # type: ignore[attr-defined]
        return grpc.StatusCode.OK, reply


@hypothesis_settings
@given(payload=st.binary(max_size=512))
def test_random_bytes_as_a_request(server: ServerThread, payload: bytes) -> None:
    code, reply = raw_execute(server, payload)
    if code is grpc.StatusCode.OK:
        assert reply is not None
        result = sandbox_pb2.ExecuteResponse.FromString(reply).result
        assert result.ok or result.failure.kind != sandbox_pb2.FAILURE_KIND_UNSPECIFIED
    else:
        assert code in {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.PERMISSION_DENIED,
        }


def test_invalid_utf8_in_code_is_invalid_request(server: ServerThread) -> None:
    # Field 1 (code), length 3, bytes that are not UTF-8.
    code, _ = raw_execute(server, b"\x0a\x03\xff\xfe\xfd")
    assert code is grpc.StatusCode.INVALID_ARGUMENT


@hypothesis_settings
@given(code=st.text(max_size=300))
def test_random_text_as_code(client: SandboxClient, code: str) -> None:
    result = client.execute(code, backend="monty")
    assert result.ok or (result.failure is not None and result.failure.kind in KNOWN_KINDS)
    assert not result.failure or result.failure.kind is not FailureKind.SANDBOX_CRASH


@hypothesis_settings
@given(data=st.binary(min_size=1, max_size=300))
def test_random_bytes_decoded_as_code(client: SandboxClient, data: bytes) -> None:
    result = client.execute(data.decode("latin-1"), backend="monty")
    assert result.ok or (result.failure is not None and result.failure.kind in KNOWN_KINDS)


@pytest.mark.parametrize("backend", [4, 99, -1])
def test_unknown_backend_enum_is_invalid(server: ServerThread, backend: int) -> None:
    request = sandbox_pb2.ExecuteRequest(code="1", backend=backend)  # type: ignore[arg-type]
    code, _ = raw_execute(server, request.SerializeToString())
    assert code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "field", ["wall_time_ms", "memory_bytes", "output_bytes", "max_recursion_depth", "pids"]
)
def test_negative_limits_are_invalid(server: ServerThread, field: str) -> None:
    request = sandbox_pb2.ExecuteRequest(code="1", limits=sandbox_pb2.Limits(**{field: -5}))
    code, _ = raw_execute(server, request.SerializeToString())
    assert code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "inputs_json",
    ["not json", "[1, 2]", '{"not an identifier": 1}', '{"a": ' * 10_000, "{" + '"a":1,' * 3 + "}"],
)
def test_malformed_inputs_are_invalid(server: ServerThread, inputs_json: str) -> None:
    request = sandbox_pb2.ExecuteRequest(code="1", inputs_json=inputs_json)
    code, _ = raw_execute(server, request.SerializeToString())
    assert code is grpc.StatusCode.INVALID_ARGUMENT


def test_huge_inputs_are_refused(client: SandboxClient) -> None:
    result = client.execute("len(blob)", backend="monty", inputs={"blob": "x" * 2_000_000})
    assert result.failure is not None and result.failure.kind is FailureKind.INVALID_REQUEST
    assert result.failure.details["field"] == "inputs_json"


def test_message_above_the_wire_cap_is_refused(client: SandboxClient) -> None:
    result = client.execute("1", stdin="x" * 9 * 1024 * 1024)
    assert result.failure is not None and result.failure.kind is FailureKind.INVALID_REQUEST
    assert result.failure.grpc_code == "RESOURCE_EXHAUSTED"


def test_nul_in_code_is_invalid(client: SandboxClient) -> None:
    result = client.execute("print(1)\x00", backend="monty")
    assert result.failure is not None and result.failure.kind is FailureKind.INVALID_REQUEST


def test_server_still_serves_after_garbage(client: SandboxClient) -> None:
    assert client.execute("print(1)").stdout == "1\n"
