"""The wire contract: service and method names, health, reflection, rich error details."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sandbox.edge.service import SandboxService, generic_handler
from sandbox.errors import Throttled
from sandbox_client import FailureKind
from sandbox_client.protocol.convert import failure_from_status
from sandbox_client.protocol.service import ServiceStub
from sandbox_client.protocol.v1 import sandbox_pb2
from tests.conftest import ServerThread


def test_every_proto_method_has_a_handler() -> None:
    service = sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"]
    handler = generic_handler(object.__new__(SandboxService))
    for method in service.methods:
        details = _details(f"/{service.full_name}/{method.name}")
        assert handler.service(details) is not None, method.name


def _details(method: str) -> grpc.HandlerCallDetails:
    class Details(grpc.HandlerCallDetails):
        pass

    d = Details()
    d.method = method  # type: ignore[attr-defined]
    d.invocation_metadata = ()  # type: ignore[attr-defined]
    return d


def test_health_reports_serving(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "sandbox.v1.SandboxService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
        assert "sandbox.v1.SandboxService" in names
        assert "grpc.health.v1.Health" in names


def test_request_errors_carry_google_rpc_error_info(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = ServiceStub(channel)
        try:
            stub.Execute(sandbox_pb2.ExecuteRequest(code=""), timeout=5)
        except grpc.RpcError as error:
            call: grpc.Call = error  # type: ignore[assignment]
            assert call.code() is grpc.StatusCode.INVALID_ARGUMENT
            raw = dict(call.trailing_metadata())["grpc-status-details-bin"]  # type: ignore[arg-type]
        else:
            raise AssertionError("empty code was accepted")
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "INVALID_REQUEST" and info.domain == "sandbox.v1"
    assert info.metadata["field"] == "code"


def test_client_subset_decodes_what_the_server_encodes() -> None:
    error = Throttled("slow down", field="sessions", retry_after_ms=1500)
    raw = error.status_details()
    failure = failure_from_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", [("grpc-status-details-bin", raw)]
    )
    assert failure.kind is FailureKind.THROTTLED
    assert failure.retry_after_ms == 1500
    assert failure.retryable
    assert failure.details == {"field": "sessions"}


def test_errors_without_details_map_by_status_code() -> None:
    unavailable = failure_from_status(grpc.StatusCode.UNAVAILABLE, "connection refused", ())
    assert unavailable.kind is FailureKind.INFRA_UNAVAILABLE and unavailable.retryable
    deadline = failure_from_status(grpc.StatusCode.DEADLINE_EXCEEDED, None, None)
    assert deadline.kind is FailureKind.CANCELLED
    assert failure_from_status(grpc.StatusCode.UNIMPLEMENTED, "", ()).kind is (
        FailureKind.INVALID_REQUEST
    )
