"""A LangChain tool that runs Python in the sandbox (`pip install
'sandbox-client[langchain]'`): `run_python_tool(client)` is a StructuredTool for any
LangChain agent. A failed run is a ToolException whose text is the failure's one-line
message (`RUNTIME_ERROR: IndexError: ... (line 2: ...)`), which LangChain hands the
model as the tool's answer so it can repair the code; a successful one answers with its
stdout and the last expression's value. Deep Agents' BaseSandbox backend waits for the
service's workspace (files) RPCs."""

from __future__ import annotations

from typing import Any

from langchain_core.tools import StructuredTool, ToolException
from pydantic import BaseModel, ConfigDict, Field

from .._client import SandboxClient
from .._request import BackendName
from ..protocol.models import Backend, Limits

__all__ = ["RunPythonArgs", "run_python_tool"]


class RunPythonArgs(BaseModel):
    """Runs Python code in a sandbox and returns what it printed and the value of its last
    expression. State does not carry over between calls: each run starts fresh."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Python source; the last expression is the result")
    inputs: dict[str, Any] | None = Field(
        default=None, description="JSON values bound as variables before the code runs"
    )


def run_python_tool(
    client: SandboxClient,
    *,
    backend: BackendName = Backend.AUTO,
    policy: str = "",
    limits: Limits | None = None,
    name: str = "run_python",
) -> StructuredTool:
    """A tool over `client` that runs code on `backend` under `policy` and `limits`."""

    def run_python(code: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        result = client.execute(code, inputs=inputs, backend=backend, policy=policy, limits=limits)
        if result.failure is not None:
            raise ToolException(f"{result.failure.kind.value}: {result.failure.message}")
        return {"stdout": result.stdout, "result": result.result}

    return StructuredTool.from_function(
        func=run_python,
        name=name,
        description=" ".join((RunPythonArgs.__doc__ or "").split()),
        args_schema=RunPythonArgs,
        handle_tool_error=True,
    )
