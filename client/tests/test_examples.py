"""The examples in client/examples, run against the real test server, so
the docs stay true."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sandbox_client import SandboxClient

CLIENT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CLIENT / "examples"))

from execute_tool import ExecuteArgs, execute_code, tool_schema  # noqa: E402


def test_tool_schema_file_matches_the_arguments_model() -> None:
    tool = tool_schema()
    params = ExecuteArgs.model_json_schema()
    assert tool["function"]["description"] == " ".join(params.pop("description").split())
    params.pop("title")
    assert tool["function"]["parameters"] == params
    assert tool["function"]["name"] == "execute_code"


def test_tool_answers_success_failure_and_bad_arguments(client: SandboxClient) -> None:
    assert execute_code(client, '{"code": "print(1)\\n2 + 3"}') == {
        "ok": True,
        "stdout": "1\n",
        "result": 5,
        "attempts": 1,
    }
    broken = execute_code(client, {"code": "xs = []\nxs[0]"})
    assert broken["ok"] is False
    assert broken["error"]["kind"] == "RUNTIME_ERROR"
    assert broken["error"]["line"] == 2
    assert broken["error"]["suggested_action"] == "REPAIR"
    bad = execute_code(client, {"code": "1", "backend": "gpu"})
    assert bad["error"]["kind"] == "INVALID_ARGUMENTS"
    json.dumps([broken, bad])  # what goes back to the model is plain JSON


def test_langchain_tool(client: SandboxClient) -> None:
    pytest.importorskip(
        "langchain_core", reason="install sandbox-client[examples] for the LangChain example"
    )
    from langchain_tool import make_tool

    tool = make_tool(client)
    assert tool.name == "execute_code"
    assert tool.args_schema is ExecuteArgs
    assert tool.invoke({"code": "sum(range(10))"})["result"] == 45
    assert tool.invoke({"code": "1 +"})["error"]["kind"] == "SYNTAX_ERROR"
