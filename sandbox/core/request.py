"""The one request type of the core: what the edge decoded and authenticated, before any
decision about it. Every RPC that runs code (Execute, ExecuteStream, Run) makes one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sandbox.access.tenants import LOCAL_TENANT
from sandbox.backends.outcome_parts import CODE_FILENAME
from sandbox.core.limits import RequestedLimits
from sandbox_client.protocol.convert import NO_LIMITS_ASKED
from sandbox_client.protocol.models import Backend

Method = Literal["Execute", "ExecuteStream", "Run", "CreateSession", "CloseSession", "Batch"]


@dataclass(frozen=True, kw_only=True)
class ToolDecl:
    """A tool the client offers a Run: the code calls it like a function."""

    name: str
    is_async: bool = False
    json_schema: str = ""
    stub: str = ""


@dataclass(frozen=True, kw_only=True)
class Request:
    """A request that passed wire validation, from an authenticated tenant."""

    method: Method = "Execute"
    tenant: str = LOCAL_TENANT
    code: str = ""
    backend: Backend | None = None  # None: not said (AUTO, or the session's)
    policy: str = ""  # as asked; "" means the tenant's (or the server's) default
    inputs: Mapping[str, Any] = field(default_factory=dict)
    inputs_size: int = 0  # bytes of inputs as sent, checked against the policy
    stdin: str = ""
    limits: RequestedLimits = NO_LIMITS_ASKED
    session_id: str = ""
    idempotency_key: str = ""
    filename: str = CODE_FILENAME  # what tracebacks call the code's file
    # Set for a Run: the tools the client offers (possibly none).
    tools: tuple[ToolDecl, ...] | None = None

    @property
    def is_tool_run(self) -> bool:
        return self.tools is not None
