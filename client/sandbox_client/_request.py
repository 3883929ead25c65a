"""What the sync and async clients share: their options, building requests and reading
answers. No I/O here."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, Literal, TypedDict, Unpack

import grpc
from pydantic import BaseModel, ConfigDict

from ._exceptions import RequestRefused
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
    """A session from create_session(): pass `session_id` to execute() to run in its
    state."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    backend: Backend | None
    policy_name: str
    idle_timeout_ms: int


class ExecuteOptions(TypedDict, total=False):
    """The keyword options of execute(), execute_stream(), run() and run_tools(), on both
    clients: one list, so the four methods and the two twins cannot drift. Left out, each
    takes the value in DEFAULT_OPTIONS."""

    backend: BackendName  # "auto": Monty, then a container where the policy allows it
    policy: str  # the server's execution policy by name; "": the default one
    inputs: Mapping[str, Any] | None  # JSON values, each bound as a variable first
    stdin: str  # what input() reads
    limits: Limits | None  # lower than the policy's only; None keeps the policy's
    session_id: str  # run inside this session's state (create_session)
    # None: a fresh key. The same key asks the server's journal for the same execution.
    idempotency_key: str | None
    timeout_s: float | None  # this call's deadline; None: the client's timeout_s
    filename: str  # the code's file name in tracebacks; "": "<code>"


DEFAULT_OPTIONS: ExecuteOptions = {
    "backend": Backend.AUTO,
    "policy": "",
    "inputs": None,
    "stdin": "",
    "limits": None,
    "session_id": "",
    "idempotency_key": None,
    "timeout_s": None,
    "filename": "",
}


def complete(options: ExecuteOptions) -> ExecuteOptions:
    """`options` with every key set. A TypedDict is not checked when the code runs, so an
    unknown key (a typo) is refused here, as a misspelt keyword argument would be."""
    unknown = sorted(options.keys() - DEFAULT_OPTIONS.keys())
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    return {**DEFAULT_OPTIONS, **options}


def execute_request(code: str, **options: Unpack[ExecuteOptions]) -> sandbox_pb2.ExecuteRequest:
    given = complete(options)
    inputs = given["inputs"]
    return sandbox_pb2.ExecuteRequest(
        code=code,
        backend=backend_to_proto(Backend(given["backend"])),
        policy=given["policy"],
        inputs_json=json.dumps(dict(inputs)) if inputs else "",
        stdin=given["stdin"],
        limits=limits_to_proto(given["limits"]),
        session_id=given["session_id"],
        # Every logical execution carries a key, so a retry can be answered from the
        # server's journal instead of running the code twice.
        idempotency_key=given["idempotency_key"] or "idk_" + uuid.uuid4().hex,
        filename=given["filename"],
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


def refused(error: grpc.RpcError) -> RequestRefused:
    """A request with no result to carry its failure (sessions): the exception to raise."""
    return RequestRefused(failure_of(error))


def failure_of(error: grpc.RpcError) -> Failure:
    call: Any = error  # grpc's errors are also Calls; the stubs do not say so
    code: grpc.StatusCode = call.code()
    failure = failure_from_status(code, call.details(), call.trailing_metadata())
    return RequestFailure(**dict(failure), grpc_code=code.name)


def failed_result(error: grpc.RpcError) -> ExecutionResult:
    return ExecutionResult.failed(failure_of(error))
