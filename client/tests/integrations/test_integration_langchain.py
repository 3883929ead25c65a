"""The LangChain tool against the real server, through langchain-core's own invoke: a
success answers with stdout and the value, a failed run hands the model its classified
one-line message, and arguments of the wrong shape are refused by the tool's schema."""

from __future__ import annotations

import pytest
from langchain_core.messages import ToolMessage
from pydantic import ValidationError

from sandbox_client import Limits, SandboxClient
from sandbox_client.integrations.langchain import RunPythonArgs, run_python_tool


def test_runs_code_and_hands_failures_to_the_model(client: SandboxClient) -> None:
    tool = run_python_tool(client, backend="monty", limits=Limits(wall_time_ms=2_000))
    assert tool.name == "run_python" and tool.args_schema is RunPythonArgs

    assert tool.invoke({"code": "print('hi')\nx * 7", "inputs": {"x": 6}}) == {
        "stdout": "hi\n",
        "result": 42,
    }
    failed = tool.invoke({"code": "xs = []\nxs[0]"})
    assert failed.startswith("RUNTIME_ERROR: IndexError")
    assert "(line 2" in failed

    # As an agent calls it: a tool call in, a ToolMessage out, marked as an error.
    call = {"name": "run_python", "args": {"code": "1 +"}, "id": "c1", "type": "tool_call"}
    message = tool.invoke(call)
    assert isinstance(message, ToolMessage)
    assert message.status == "error" and message.content.startswith("SYNTAX_ERROR:")


def test_wrong_arguments_are_refused_by_the_schema(client: SandboxClient) -> None:
    tool = run_python_tool(client)
    with pytest.raises(ValidationError):
        tool.invoke({"code": 123})
    with pytest.raises(ValidationError):
        tool.invoke({"code": "1", "shell": "rm -rf /"})
