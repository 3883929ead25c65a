"""`sandbox mcp` against the MCP SDK's own client, over stdio (the host spawns it) and
over streamable HTTP on loopback (with bearer tokens mapped to tenants' API keys): the
tools and resources are listed, code runs, a classified failure is an `isError` result
with its message, a session keeps state across calls, bad input is an MCP error and
never a crash, and a request without a known token is refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

# The `mcp` extra is in the server's `dev` extra, so these imports never skip.
import httpx2
import pytest
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import TextContent, TextResourceContents

from sandbox.access.tenants import new_api_key

SANDBOX = [sys.executable, "-m", "sandbox"]


REPO = Path(__file__).resolve().parents[3]
# The policies that ship in policies/, beside the built-in `default`.
ALL_POLICIES = ["data-analysis", "default", "pure-compute"]


def service_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The child's environment: a state directory of its own, never the user's, and the
    repository's policy files."""
    return {
        **os.environ,
        "SANDBOX_JOURNAL__STATE_DIR": str(tmp / "state"),
        "SANDBOX_POLICIES__DIR": str(REPO / "policies"),
        **extra,
    }


def text_of(result: Any) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


async def read_text(session: ClientSession, uri: str) -> str:
    contents = (await session.read_resource(uri)).contents[0]
    assert isinstance(contents, TextResourceContents)
    return contents.text


async def exercise(session: ClientSession, usable: list[str]) -> None:
    """Everything the issue asks of the MCP server, on one connected session; `usable`:
    the policies the caller's tenant may use."""
    await session.initialize()

    tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert set(tools) == {"run_python", "create_session", "close_session"}
    for tool in tools.values():
        assert tool.annotations is not None
        assert tool.annotations.open_world_hint is False
        assert tool.annotations.destructive_hint is False
    run_schema = tools["run_python"].input_schema["properties"]
    assert {"code", "inputs", "backend", "policy", "limits", "session_id"} <= set(run_schema)
    assert tools["run_python"].output_schema is not None

    uris = {str(r.uri) for r in (await session.list_resources()).resources}
    assert {"sandbox://policies", "sandbox://backends"} <= uris
    templates = (await session.list_resource_templates()).resource_templates
    assert "sandbox://policies/{name}" in {t.uri_template for t in templates}
    policies = json.loads(await read_text(session, "sandbox://policies"))
    assert sorted(p["name"] for p in policies) == usable  # this caller's, no more
    default = next(p for p in policies if p["name"] == "default")
    assert default["default"] is True and default["digest"].startswith("sha256:")
    assert [p["name"] for p in policies if p["default"]] == ["default"]
    assert default["digest"] in await read_text(session, "sandbox://policies/default")
    with pytest.raises(MCPError) as hidden:
        await session.read_resource("sandbox://policies/no-such-policy")
    assert hidden.value.code == -32602
    assert "monty" in json.loads(await read_text(session, "sandbox://backends"))

    ok = await session.call_tool(
        "run_python", {"code": "print('hi')\nx * 7", "inputs": {"x": 6}, "backend": "monty"}
    )
    assert ok.is_error is False
    assert ok.structured_content is not None
    assert ok.structured_content["value"] == 42
    assert ok.structured_content["stdout"] == "hi\n"
    assert ok.structured_content["failure"] is None

    broken = await session.call_tool("run_python", {"code": "xs = []\nxs[0]"})
    assert broken.is_error is True
    assert broken.structured_content is not None
    failure = broken.structured_content["failure"]
    assert failure["kind"] == "RUNTIME_ERROR" and failure["frames"][-1]["line"] == 2
    assert text_of(broken) == f"RUNTIME_ERROR: {failure['message']}"
    assert "IndexError" in failure["message"]

    # A request the service refuses (an unknown policy) is the model's to fix too.
    refused = await session.call_tool("run_python", {"code": "1", "policy": "no-such-policy"})
    assert refused.is_error is True
    assert "no-such-policy" in text_of(refused)

    created = await session.call_tool("create_session", {"backend": "monty"})
    assert created.is_error is False and created.structured_content is not None
    session_id = created.structured_content["session_id"]
    first = await session.call_tool("run_python", {"code": "total = 40", "session_id": session_id})
    assert first.is_error is False
    second = await session.call_tool("run_python", {"code": "total + 2", "session_id": session_id})
    assert second.structured_content is not None and second.structured_content["value"] == 42
    closed = await session.call_tool("close_session", {"session_id": session_id})
    assert closed.is_error is False
    again = await session.call_tool("close_session", {"session_id": session_id})
    assert again.is_error is True and "INVALID_REQUEST" in text_of(again)

    # Wrong argument types: an input validation error, named, that the model can fix.
    wrong = await session.call_tool("run_python", {"code": 123, "limits": "lots"})
    assert wrong.is_error is True
    assert "code" in text_of(wrong) and "limits" in text_of(wrong)
    bad_backend = await session.call_tool("run_python", {"code": "1", "backend": "gpu"})
    assert bad_backend.is_error is True and "backend" in text_of(bad_backend)
    # An unknown tool: a JSON-RPC error, not a tool result.
    with pytest.raises(MCPError) as unknown:
        await session.call_tool("rm_rf", {})
    assert unknown.value.code == -32602 and "rm_rf" in unknown.value.message

    # And the server is still there.
    after = await session.call_tool("run_python", {"code": "1 + 1"})
    assert after.structured_content is not None and after.structured_content["value"] == 2


async def test_stdio_transport(tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=SANDBOX[0], args=[*SANDBOX[1:], "mcp"], env=service_env(tmp_path)
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await exercise(session, usable=ALL_POLICIES)  # no tenants: every caller is `local`


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def http_mcp(tmp: Path, tokens: dict[str, str], tenants: str) -> Iterator[str]:
    """`sandbox mcp --transport http` with its own in-process service and tenants."""
    port = free_port()
    (tmp / "tenants.toml").write_text(tenants)
    tokens_file = tmp / "tokens.json"
    tokens_file.write_text(json.dumps(tokens))
    log = tmp / "mcp.log"
    env = service_env(tmp, SANDBOX_TENANTS__FILE=str(tmp / "tenants.toml"))
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                *SANDBOX,
                "mcp",
                "--transport",
                "http",
                "--port",
                str(port),
                "--tokens",
                str(tokens_file),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"sandbox mcp did not start: {log.read_text()}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text(), log.read_text()


@asynccontextmanager
async def connected(url: str, token: str) -> AsyncIterator[ClientSession]:
    auth = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=auth) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        yield session


async def test_http_transport_with_tokens(tmp_path: Path) -> None:
    key, digest = new_api_key()
    tenants = textwrap.dedent(f"""
        [tenants.agent]
        api_key_sha256 = ["{digest}"]
        allowed_policies = ["default", "pure-compute"]
    """)
    # One token for the tenant; one mapped to a key the service does not know.
    tokens = {"tok-agent": key, "tok-stale": "sbx_not_a_key"}
    with http_mcp(tmp_path, tokens, tenants) as url:
        async with connected(url, "tok-agent") as session:
            # As tenant `agent` (the service refuses calls without a key), which may use
            # `default` and `pure-compute` only.
            await exercise(session, usable=["default", "pure-compute"])

        async with connected(url, "tok-stale") as session:
            await session.initialize()
            # The MCP server lets the token in; the service refuses the key it maps to.
            stale = await session.call_tool("run_python", {"code": "1"})
            assert stale.is_error is True
            assert text_of(stale) == "INVALID_REQUEST: unknown or revoked API key"
            assert json.loads(await read_text(session, "sandbox://policies")) == []

        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
        headers = {"Accept": "application/json, text/event-stream"}
        async with httpx2.AsyncClient() as http:
            bare = await http.post(url, json=initialize, headers=headers)
            assert bare.status_code == 401
            wrong = await http.post(
                url, json=initialize, headers={**headers, "Authorization": "Bearer guess"}
            )
            assert wrong.status_code == 401


def host_config() -> dict[str, Any]:
    """The MCP host configuration the README shows."""
    readme = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```json\n(.*?)```", readme, re.S) if "mcpServers" in b]
    assert len(blocks) == 1
    entry: dict[str, Any] = json.loads(blocks[0])["mcpServers"]["sandbox"]
    return entry


async def test_the_readme_host_config_starts_a_working_server(tmp_path: Path) -> None:
    entry = host_config()
    assert entry["command"] == "sandbox"
    # The host finds `sandbox` on its PATH; here, it is the one beside this interpreter.
    command = shutil.which("sandbox", path=str(Path(sys.executable).parent))
    assert command is not None
    params = StdioServerParameters(command=command, args=entry["args"], env=service_env(tmp_path))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        ran = await session.call_tool("run_python", {"code": "sum(range(10))"})
        assert ran.structured_content is not None and ran.structured_content["value"] == 45
