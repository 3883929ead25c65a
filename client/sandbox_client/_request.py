"""What the sync and async clients share: building requests and reading answers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import grpc
from pydantic import BaseModel, ConfigDict

from .protocol.convert import (
    backend_from_proto,
    backend_to_proto,
    failure_from_status,
    limits_to_proto,
    result_from_proto,
)
from .protocol.models import Backend, ExecutionResult, Failure, Limits
from .protocol.v1 import sandbox_pb2

BackendName = Backend | Literal["auto", "monty", "container"]
DEFAULT_TARGET = "127.0.0.1:50051"


class OutputChunk(BaseModel):
    """Output as it was produced, from execute_stream()."""

    model_config = ConfigDict(frozen=True)

    stream: Literal["stdout", "stderr"]
    text: str


class Session(BaseModel):
    model_config = ConfigDict(frozen=True)

    session_id: str
    backend: Backend | None
    policy_name: str
    idle_timeout_ms: int


class SandboxError(Exception):
    """A request the server refused outright (no result to return), e.g. CreateSession."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.kind.value}: {failure.message}")
        self.failure = failure


def execute_request(
    code: str,
    *,
    backend: BackendName = Backend.AUTO,
    policy: str = "",
    inputs: Mapping[str, Any] | None = None,
    stdin: str = "",
    limits: Limits | None = None,
    session_id: str = "",
    idempotency_key: str | None = None,
) -> sandbox_pb2.ExecuteRequest:
    return sandbox_pb2.ExecuteRequest(
        code=code,
        backend=backend_to_proto(Backend(backend)),
        policy=policy,
        inputs_json=json.dumps(dict(inputs)) if inputs else "",
        stdin=stdin,
        limits=limits_to_proto(limits),
        session_id=session_id,
        # Every logical execution carries a key, so a retry can be answered from the
        # server's journal instead of running the code twice.
        idempotency_key=idempotency_key or "idk_" + uuid.uuid4().hex,
    )


def session_request(
    backend: BackendName, policy: str, limits: Limits | None
) -> sandbox_pb2.CreateSessionRequest:
    return sandbox_pb2.CreateSessionRequest(
        backend=backend_to_proto(Backend(backend)),
        policy=policy,
        limits=limits_to_proto(limits),
    )


def session_from_proto(msg: sandbox_pb2.CreateSessionResponse) -> Session:
    return Session(
        session_id=msg.session_id,
        backend=backend_from_proto(msg.backend),
        policy_name=msg.policy_name,
        idle_timeout_ms=msg.idle_timeout_ms,
    )


def stream_event(msg: sandbox_pb2.ExecuteStreamResponse) -> OutputChunk | ExecutionResult:
    if msg.HasField("result"):
        return result_from_proto(msg.result)
    stream: Literal["stdout", "stderr"] = (
        "stderr" if msg.output.stream == sandbox_pb2.STDERR else "stdout"
    )
    return OutputChunk(stream=stream, text=msg.output.text)


class RequestFailure(Failure):
    """A failure that came back as a gRPC error rather than a result (a refused request,
    the transport): `grpc_code` names the status. Client side only."""

    grpc_code: str = ""


def grpc_code(failure: Failure | None) -> str:
    """The gRPC status a failure came back as, "" for a failure inside a result."""
    return failure.grpc_code if isinstance(failure, RequestFailure) else ""


def failure_of(error: grpc.RpcError) -> Failure:
    call: Any = error  # grpc's errors are also Calls; the stubs do not say so
    code: grpc.StatusCode = call.code()
    failure = failure_from_status(code, call.details(), call.trailing_metadata())
    return RequestFailure(**dict(failure), grpc_code=code.name)


def failed_result(error: grpc.RpcError) -> ExecutionResult:
    return ExecutionResult.failed(failure_of(error))
