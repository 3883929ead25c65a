"""Requests as they arrive off the wire, validated into the core's Request; every
problem is INVALID_REQUEST naming the field. (Results go out through the protocol's one
converter, sandbox_client.protocol.convert.)"""

from __future__ import annotations

import json
from typing import Any

from sandbox.backends.outcome_parts import CODE_FILENAME
from sandbox.core.limits import LIMIT_FIELDS, RequestedLimits
from sandbox.core.request import Method, Request, ToolDecl
from sandbox.errors import InvalidRequest
from sandbox_client.protocol.convert import backend_from_proto, limits_from_proto
from sandbox_client.protocol.models import Backend
from sandbox_client.protocol.v1 import sandbox_pb2

_MAX_KEY_BYTES = 256
# The longest idempotency key, in UTF-8 bytes: the journal keeps it (24 h by default) and
# every audit record of the key's requests carries it.
MAX_IDEMPOTENCY_KEY_BYTES = 256


def backend_field(value: int, field: str = "backend") -> Backend | None:
    try:
        return backend_from_proto(value)
    except ValueError:
        raise InvalidRequest(f"unknown backend value {value}", field=field) from None


def requested_limits(msg: sandbox_pb2.Limits) -> RequestedLimits:
    for name in LIMIT_FIELDS:
        value = getattr(msg, name)
        if value < 0:
            raise InvalidRequest(f"limits.{name} is negative ({value})", field=f"limits.{name}")
    return limits_from_proto(msg)


def parse_inputs(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"inputs_json is not valid JSON: {exc}", field="inputs_json") from None
    if not isinstance(value, dict):
        raise InvalidRequest("inputs_json must be a JSON object", field="inputs_json")
    for key in value:
        if not key.isidentifier() or len(key) > _MAX_KEY_BYTES:
            shown = repr(key) if len(key) <= _MAX_KEY_BYTES else repr(key[:40]) + "..."
            raise InvalidRequest(
                f"input name {shown} is not a Python identifier of at most "
                f"{_MAX_KEY_BYTES} characters",
                field="inputs_json",
            )
    return value


def idempotency_key(key: str) -> str:
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_IDEMPOTENCY_KEY_BYTES:
        raise InvalidRequest(
            f"idempotency_key is {size} bytes; at most {MAX_IDEMPOTENCY_KEY_BYTES} "
            "(UTF-8) are accepted",
            field="idempotency_key",
        )
    return key


MAX_FILENAME_CHARS = 255


def filename(name: str) -> str:
    """The code's display name, or "<code>": printable, one line, at most 255 chars."""
    if not name:
        return CODE_FILENAME
    if len(name) > MAX_FILENAME_CHARS or not name.isprintable():
        raise InvalidRequest(
            f"filename must be at most {MAX_FILENAME_CHARS} printable characters on one line",
            field="filename",
        )
    return name


def request_of(
    msg: sandbox_pb2.ExecuteRequest,
    *,
    tenant: str,
    method: Method = "Execute",
    tools: tuple[ToolDecl, ...] | None = None,
) -> Request:
    if "\x00" in msg.code:
        raise InvalidRequest("code contains a NUL character", field="code")
    return Request(
        method=method,
        tenant=tenant,
        code=msg.code,
        backend=backend_field(msg.backend),
        policy=msg.policy,
        inputs=parse_inputs(msg.inputs_json),
        inputs_size=len(msg.inputs_json.encode("utf-8", "surrogatepass")),
        stdin=msg.stdin,
        limits=requested_limits(msg.limits),
        session_id=msg.session_id,
        idempotency_key=idempotency_key(msg.idempotency_key),
        filename=filename(msg.filename),
        tools=tools,
    )


def session_request_of(msg: sandbox_pb2.CreateSessionRequest, *, tenant: str) -> Request:
    return Request(
        method="CreateSession",
        tenant=tenant,
        backend=backend_field(msg.backend),
        policy=msg.policy,
        limits=requested_limits(msg.limits),
    )


def run_start_of(msg: Any, *, tenant: str) -> Request:
    """The Request a Run stream's first message starts."""
    if msg is None or not hasattr(msg, "HasField") or not msg.HasField("start"):
        raise InvalidRequest("a Run stream must begin with `start`", field="start")
    tools = tuple(
        ToolDecl(name=t.name, is_async=t.is_async, json_schema=t.json_schema, stub=t.stub)
        for t in msg.start.tools
    )
    return request_of(msg.start.request, tenant=tenant, method="Run", tools=tools)
