"""Validates requests as they arrive off the wire; every problem is INVALID_REQUEST
naming the field. (Results go out through sandbox_client's one converter.)"""

from __future__ import annotations

import json
from typing import Any

from sandbox.access.tenants import LOCAL_TENANT
from sandbox.core.executor import ExecuteCall
from sandbox.core.limits import LIMIT_FIELDS, NO_REQUESTED_LIMITS, RequestedLimits
from sandbox.errors import invalid
from sandbox_client import Backend
from sandbox_client.protocol.convert import backend_from_proto
from sandbox_client.protocol.v1 import sandbox_pb2

_MAX_KEY_BYTES = 256


def backend_field(value: int, field: str = "backend") -> Backend | None:
    try:
        return backend_from_proto(value)
    except ValueError:
        raise invalid(f"unknown backend value {value}", field=field) from None


def requested_limits(msg: sandbox_pb2.Limits) -> RequestedLimits:
    if msg.ByteSize() == 0:  # asks for nothing (most requests)
        return NO_REQUESTED_LIMITS
    values: dict[str, int | None] = {}
    for name in LIMIT_FIELDS:
        value = getattr(msg, name)
        if value < 0:
            raise invalid(f"limits.{name} is negative ({value})", field=f"limits.{name}")
        values[name] = value or None
    return RequestedLimits(**values)


def parse_inputs(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"inputs_json is not valid JSON: {exc}", field="inputs_json") from None
    if not isinstance(value, dict):
        raise invalid("inputs_json must be a JSON object", field="inputs_json")
    for key in value:
        if not key.isidentifier() or len(key) > _MAX_KEY_BYTES:
            raise invalid(f"input name {key!r} is not a Python identifier", field="inputs_json")
    return value


def execute_call(msg: sandbox_pb2.ExecuteRequest, *, tenant: str = LOCAL_TENANT) -> ExecuteCall:
    if "\x00" in msg.code:
        raise invalid("code contains a NUL character", field="code")
    return ExecuteCall(
        code=msg.code,
        backend=backend_field(msg.backend),
        policy=msg.policy,
        tenant=tenant,
        inputs=parse_inputs(msg.inputs_json),
        inputs_size=len(msg.inputs_json.encode("utf-8", "surrogatepass")),
        stdin=msg.stdin,
        limits=requested_limits(msg.limits),
        session_id=msg.session_id,
        idempotency_key=msg.idempotency_key,
    )
