"""The service's method table, read from the proto descriptor: the client's stub and
the server's handlers are both built from it, so a method added to the .proto needs no
generated stub module and no hand-kept list."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory

from .v1 import sandbox_pb2

SERVICE = sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"]
SERVICE_NAME: str = SERVICE.full_name


@dataclass(frozen=True)
class Method:
    name: str
    path: str  # "/sandbox.v1.SandboxService/Execute"
    request: type[Any]
    response: type[Any]
    client_streaming: bool
    server_streaming: bool

    @property
    def cardinality(self) -> str:
        """grpc's name for the shape: unary_unary, unary_stream, stream_stream, ..."""
        return (
            f"{'stream' if self.client_streaming else 'unary'}_"
            f"{'stream' if self.server_streaming else 'unary'}"
        )


METHODS: dict[str, Method] = {
    m.name: Method(
        name=m.name,
        path=f"/{SERVICE_NAME}/{m.name}",
        request=message_factory.GetMessageClass(m.input_type),
        response=message_factory.GetMessageClass(m.output_type),
        client_streaming=m.client_streaming,
        server_streaming=m.server_streaming,
    )
    for m in SERVICE.methods
}


class ServiceStub:
    """`sandbox.v1.SandboxService` on a channel (grpc.Channel or grpc.aio.Channel):
    `ServiceStub(channel).Execute(request, timeout=...)`, one attribute per method."""

    def __init__(self, channel: Any) -> None:
        for method in METHODS.values():
            open_call: Callable[..., Any] = getattr(channel, method.cardinality)
            setattr(
                self,
                method.name,
                open_call(
                    method.path,
                    request_serializer=method.request.SerializeToString,
                    response_deserializer=method.response.FromString,
                ),
            )

    def __getattr__(self, name: str) -> Any:  # for type checkers: every method is Any
        raise AttributeError(name)


def generic_handler(
    implementations: Mapping[str, Callable[..., Any]],
    decode: Callable[[Method], Callable[[bytes], Any]] | None = None,
) -> grpc.GenericRpcHandler:
    """A server's handler for the methods in `implementations` (by name). `decode`
    chooses each method's request deserializer (default: the message's FromString)."""
    handlers = {}
    for name, implementation in implementations.items():
        method = METHODS[name]
        make: Callable[..., grpc.RpcMethodHandler[Any, Any]] = getattr(
            grpc, f"{method.cardinality}_rpc_method_handler"
        )
        handlers[name] = make(
            implementation,
            request_deserializer=decode(method) if decode else method.request.FromString,
            response_serializer=method.response.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
