"""Channels for the twin clients: TLS or plaintext, and an API key sent as
`authorization: Bearer KEY` metadata on every call (an interceptor, so every RPC, present
and future, carries it; call credentials would need TLS even on loopback)."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

Metadata = tuple[tuple[str, str], ...]


def auth_metadata(api_key: str | None) -> Metadata:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


class _Details(
    namedtuple(  # as grpc's own interceptor examples build ClientCallDetails
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


def _with(metadata: Any, extra: Metadata) -> list[tuple[str, Any]]:
    return [*(tuple(m) for m in (metadata or ())), *extra]


class _SyncAuth(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, extra: Metadata) -> None:
        self._extra = extra

    def _details(self, d: Any) -> _Details:
        return _Details(
            d.method,
            d.timeout,
            _with(d.metadata, self._extra),
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def _aio_details(d: Any, extra: Metadata) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        d.method,
        d.timeout,
        grpc.aio.Metadata(*_with(d.metadata, extra)),
        d.credentials,
        d.wait_for_ready,
    )


class _AsyncUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, extra: Metadata) -> None:
        self._extra = extra

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._extra), request)


class _AsyncUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, extra: Metadata) -> None:
        self._extra = extra

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._extra), request)


class _AsyncStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, extra: Metadata) -> None:
        self._extra = extra

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_aio_details(details, self._extra), request_iterator)


def sync_channel(
    target: str,
    options: Sequence[tuple[str, Any]],
    *,
    api_key: str | None,
    credentials: grpc.ChannelCredentials | None,
) -> grpc.Channel:
    channel = (
        grpc.secure_channel(target, credentials, options=list(options))
        if credentials is not None
        else grpc.insecure_channel(target, options=list(options))
    )
    extra = auth_metadata(api_key)
    return grpc.intercept_channel(channel, _SyncAuth(extra)) if extra else channel


def async_channel(
    target: str,
    options: Sequence[tuple[str, Any]],
    *,
    api_key: str | None,
    credentials: grpc.ChannelCredentials | None,
) -> grpc.aio.Channel:
    extra = auth_metadata(api_key)
    interceptors: list[Any] = (
        [_AsyncUnaryUnary(extra), _AsyncUnaryStream(extra), _AsyncStreamStream(extra)]
        if extra
        else []
    )
    if credentials is not None:
        return grpc.aio.secure_channel(
            target, credentials, options=list(options), interceptors=interceptors or None
        )
    return grpc.aio.insecure_channel(
        target, options=list(options), interceptors=interceptors or None
    )
