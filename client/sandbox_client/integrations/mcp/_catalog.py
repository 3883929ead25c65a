"""What the MCP server shows as resources: the policies a caller may name (each
explained, with its digest) and the backends the service offers. The service has no RPC
that lists them, so whoever starts the MCP server hands it this catalog (`sandbox mcp`
builds it from the server's settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ...protocol.models import Backend


class PolicyInfo(BaseModel):
    """One execution policy, as a caller reads it before naming it in `run_python`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    digest: str  # sha256 of the policy's canonical form, as the audit log records it
    explanation: str  # what code under the policy may do, in plain English
    default: bool = False  # the policy a request naming none runs under


class Catalog(BaseModel):
    """The resources of one MCP server."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policies: tuple[PolicyInfo, ...] = ()
    backends: tuple[Backend, ...] = Field(default=(Backend.MONTY,))

    def policy(self, name: str) -> PolicyInfo | None:
        return next((p for p in self.policies if p.name == name), None)
