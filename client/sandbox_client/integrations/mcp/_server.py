"""The MCP server: `run_python`, `create_session` and `close_session` as tools over the
service's RPCs (a thin client: every call is one Execute, CreateSession or
CloseSession), and the catalog's policies and backends as resources.

A run that fails is a tool result with `isError` and the failure's one-line message
(the model can repair it); the whole ExecutionResult is the structured content either
way. Arguments that do not validate are also an `isError` result naming the field (the
MCP spec's "input validation error", which the model can correct); an unknown tool is a
JSON-RPC error (INVALID_PARAMS), as the spec's protocol errors are."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, InputRequiredResult, TextContent, ToolAnnotations
from mcp_types.jsonrpc import INVALID_PARAMS
from pydantic import AnyHttpUrl, Field

from ..._client import AsyncSandboxClient
from ..._exceptions import RequestRefused
from ...protocol.models import Backend, ExecutionResult, Limits
from ._auth import TokenMap, caller_api_key
from ._catalog import Catalog

BackendArg = Literal["auto", "monty", "container"]
# The resources' content: one catalog, or one per caller's API key (None: no key).
CatalogSource = Catalog | Callable[[str | None], Catalog]

# Hints for the host: the tools reach nothing outside the sandbox (the code has no
# network) and destroy nothing of the host's. Running code twice may differ.
_RUN = ToolAnnotations(
    title="Run Python in a sandbox",
    read_only_hint=False,
    destructive_hint=False,
    idempotent_hint=False,
    open_world_hint=False,
)
_SESSION = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)


class _Clients:
    """One AsyncSandboxClient per API key, made on first use on the server's loop."""

    def __init__(self, target: str, api_key: str | None, timeout_s: float | None) -> None:
        self.target = target
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._clients: dict[str | None, AsyncSandboxClient] = {}

    def for_caller(self) -> AsyncSandboxClient:
        key = caller_api_key(self.api_key)
        client = self._clients.get(key)
        if client is None:
            client = AsyncSandboxClient(self.target, api_key=key, timeout_s=self.timeout_s)
            self._clients[key] = client
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


class SandboxMCPServer(MCPServer[Any]):
    """MCPServer whose unknown tools are protocol errors, not tool results."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        if name not in {tool.name for tool in await self.list_tools()}:
            raise MCPError(INVALID_PARAMS, f"Unknown tool: {name}")
        return await super().call_tool(name, arguments, context)


class RunOutput(ExecutionResult):
    """run_python's structured content: the whole ExecutionResult, and `value`, the last
    expression's value decoded from `result_json` (null when there was none)."""

    value: Any = None


def run_result(result: ExecutionResult) -> CallToolResult:
    """The tool result of one run: the ExecutionResult as structured content; its text
    is the failure's one-line message, or the result as JSON."""
    structured = RunOutput(**dict(result), value=result.result).model_dump(mode="json")
    if result.failure is not None:
        text = f"{result.failure.kind.value}: {result.failure.message}"
    else:
        text = json.dumps(structured)
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=structured,
        is_error=not result.ok,
    )


def build_server(
    target: str,
    *,
    catalog: CatalogSource | None = None,
    api_key: str | None = None,
    tokens: Mapping[str, str] | None = None,
    public_url: str = "http://127.0.0.1:8000",
    timeout_s: float | None = 120.0,
) -> MCPServer[Any]:
    """An MCP server over the service at `target`. `api_key` is the tenant's key for
    calls with no bearer token (stdio); `tokens` ({bearer token: API key}), when given,
    makes the HTTP transport refuse a request without one of those tokens, and each call
    then runs as the token's tenant. `catalog` is what the resources show, or a function
    of the caller's API key that returns what that caller may use. `public_url` is this
    server's own URL, announced in its OAuth resource metadata when `tokens` are set."""
    clients = _Clients(target, api_key, timeout_s)

    @asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await clients.close()

    auth: dict[str, Any] = {}
    if tokens:
        url = AnyHttpUrl(public_url)
        auth = {
            "token_verifier": TokenMap(tokens),
            "auth": AuthSettings(issuer_url=url, resource_server_url=url),
        }
    server = SandboxMCPServer(
        "sandbox",
        instructions=(
            "Runs Python in a sandbox (Monty, a Python subset, or a network-isolated "
            "container) and classifies every failure. A failed run is an error result "
            "whose text says what went wrong: fix the code and run it again. Create a "
            "session to keep variables across runs. The resources list the policies "
            "and backends you may name."
        ),
        lifespan=lifespan,
        **auth,
    )

    @server.tool(annotations=_RUN, structured_output=True)
    async def run_python(
        code: Annotated[str, Field(description="Python source; the last expression is the result")],
        inputs: Annotated[
            dict[str, Any] | None, Field(description="JSON values bound as variables first")
        ] = None,
        backend: Annotated[
            BackendArg, Field(description="monty, container, or auto (Monty, then a container)")
        ] = "auto",
        policy: Annotated[str, Field(description="execution policy by name; '' the default")] = "",
        limits: Annotated[
            Limits | None, Field(description="lower limits than the policy's; null keeps them")
        ] = None,
        session_id: Annotated[
            str, Field(description="run in this session's state (create_session)")
        ] = "",
    ) -> Annotated[CallToolResult, RunOutput]:
        """Runs Python code once in the sandbox and returns the whole result: stdout,
        stderr, the last expression's value, and a classified failure (kind, message,
        line, whether retrying can help)."""
        result = await clients.for_caller().execute(
            code,
            inputs=inputs,
            backend=Backend(backend),
            policy=policy,
            limits=limits,
            session_id=session_id,
        )
        return run_result(result)

    @server.tool(annotations=_SESSION)
    async def create_session(
        backend: Annotated[
            Literal["monty", "container"], Field(description="where the session's state lives")
        ] = "monty",
        policy: Annotated[str, Field(description="execution policy by name; '' the default")] = "",
        limits: Annotated[Limits | None, Field(description="the session's limits")] = None,
    ) -> dict[str, Any]:
        """Starts a session: variables, functions and imports of one run stay for the
        next run that names its session_id. Close it when done."""
        try:
            session = await clients.for_caller().create_session(
                backend=Backend(backend), policy=policy, limits=limits
            )
        except RequestRefused as exc:
            raise ToolError(f"{exc.failure.kind.value}: {exc.failure.message}") from None
        return session.model_dump(mode="json")

    @server.tool(annotations=_SESSION)
    async def close_session(
        session_id: Annotated[str, Field(description="from create_session")],
    ) -> dict[str, Any]:
        """Ends a session and frees what it holds."""
        try:
            await clients.for_caller().close_session(session_id)
        except RequestRefused as exc:
            raise ToolError(f"{exc.failure.kind.value}: {exc.failure.message}") from None
        return {"closed": session_id}

    _add_resources(server, catalog or Catalog(), api_key)
    return server


def _add_resources(server: MCPServer[Any], catalog: CatalogSource, api_key: str | None) -> None:
    def caller() -> Catalog:
        if isinstance(catalog, Catalog):
            return catalog
        return catalog(caller_api_key(api_key))

    @server.resource(
        "sandbox://policies",
        name="policies",
        description="The execution policies you may name, each with its digest",
        mime_type="application/json",
    )
    def policies() -> str:
        return json.dumps([p.model_dump(mode="json") for p in caller().policies])

    @server.resource(
        "sandbox://policies/{name}",
        name="policy",
        description="What code under one policy may do, in plain English, with its digest",
        mime_type="text/plain",
    )
    def policy(name: str) -> str:
        info = caller().policy(name)
        if info is None:
            raise ResourceNotFoundError(f"no policy '{name}' you may use")
        return info.explanation

    @server.resource(
        "sandbox://backends",
        name="backends",
        description="The backends this service offers (the `backend` of run_python)",
        mime_type="application/json",
    )
    def backends() -> str:
        return json.dumps([b.value for b in caller().backends])
