"""MCP overhead: `run_python('1+1')` through `sandbox mcp` over stdio (the MCP SDK's own
client spawning it), against `Execute('1+1')` through SandboxClient to the same
service, measured in the same run.

    python -m bench.mcp_overhead [--n 300]

Both go to one `sandbox serve` process; the MCP server is a second process that is a
client of it, so each run_python is one JSON-RPC round trip over the pipes plus the
Execute the MCP server makes. Calls alternate between the two paths, so load on the
machine falls on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid

from mcp import ClientSession, StdioServerParameters, stdio_client

from sandbox_client import AsyncSandboxClient

from ._server import percentiles, sandbox_server

WARM_UP = 50


async def measure(address: str, n: int) -> tuple[list[float], list[float]]:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "sandbox", "mcp", "--server", address]
    )
    executes: list[float] = []
    mcp_runs: list[float] = []
    async with (
        AsyncSandboxClient(address, timeout_s=60) as client,
        stdio_client(params) as (read, write),
        ClientSession(read, write) as mcp,
    ):
        await mcp.initialize()
        for i in range(n + WARM_UP):
            started = time.perf_counter()
            reply = await client.execute("1+1", backend="monty", idempotency_key=uuid.uuid4().hex)
            execute_s = time.perf_counter() - started
            assert reply.ok, reply.failure

            started = time.perf_counter()
            ran = await mcp.call_tool("run_python", {"code": "1+1", "backend": "monty"})
            mcp_s = time.perf_counter() - started
            assert ran.structured_content is not None and ran.structured_content["value"] == 2

            if i >= WARM_UP:
                executes.append(execute_s)
                mcp_runs.append(mcp_s)
    return executes, mcp_runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300, help="calls of each kind")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as state,
        sandbox_server(f"journal.state_dir={state}", "monty.min_workers=2") as server,
    ):
        executes, mcp_runs = asyncio.run(measure(server.address, args.n))
    execute_p50, execute_p99 = percentiles(executes)
    mcp_p50, mcp_p99 = percentiles(mcp_runs)
    print(f"n={args.n}")
    print(
        f"{'Execute(1+1) via the client':<34}p50 {execute_p50:7.3f} ms  p99 {execute_p99:7.3f} ms"
    )
    print(f"{'run_python(1+1) via MCP stdio':<34}p50 {mcp_p50:7.3f} ms  p99 {mcp_p99:7.3f} ms")
    print(f"ratio MCP / Execute p50            {mcp_p50 / execute_p50:5.2f}x")
    print(f"MCP's own cost p50                 {mcp_p50 - execute_p50:7.3f} ms")


if __name__ == "__main__":
    main()
