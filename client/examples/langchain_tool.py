"""The same tool for LangChain (langchain-core): `make_tool(client)` returns a
StructuredTool an agent can be given; `pip install 'sandbox-client[examples]'`."""

from __future__ import annotations

from typing import Any

from execute_tool import ExecuteArgs, execute_code
from langchain_core.tools import StructuredTool

from sandbox_client import SandboxClient


def make_tool(client: SandboxClient) -> StructuredTool:
    def run(code: str, backend: str = "auto") -> dict[str, Any]:
        return execute_code(client, {"code": code, "backend": backend})

    return StructuredTool.from_function(
        func=run,
        name="execute_code",
        description=ExecuteArgs.__doc__ or "",
        args_schema=ExecuteArgs,
    )
