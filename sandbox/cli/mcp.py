"""`sandbox mcp`: the MCP server of sandbox_client.integrations.mcp, over stdio (for an
MCP host that starts it) or streamable HTTP, as a client of `--server ADDR` or, with no
server given, of a service it runs in this process on a free loopback port."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sandbox.cli.settings import API_KEY_VARIABLE, load_printing_notes
from sandbox.config import Settings
from sandbox.errors import ConfigError
from sandbox.logs import configure_logging

# The HTTP transport's {bearer token: API key} map, as JSON, when --tokens is not given.
TOKENS_VARIABLE = "SANDBOX_MCP_TOKENS"
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def add_command(sub: Any) -> None:
    mcp = sub.add_parser("mcp", help="serve the sandbox to MCP hosts (stdio or HTTP)")
    mcp.add_argument("--server", help="ADDR of a running server; default: one in-process")
    mcp.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE, ""),
        help=f"API key for --server (default: ${API_KEY_VARIABLE}); with --tokens, per token",
    )
    mcp.add_argument("--config", type=Path, help="TOML settings file (policies, backends)")
    mcp.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    mcp.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    mcp.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    mcp.add_argument(
        "--tokens",
        type=Path,
        help=f"HTTP: a JSON file {{bearer token: API key}} (default: ${TOKENS_VARIABLE})",
    )
    mcp.set_defaults(func=run_mcp)


def run_mcp(args: argparse.Namespace) -> int:
    settings = load_printing_notes(args.config)
    # stdout is the protocol's on stdio: every log line goes to stderr, warnings only.
    configure_logging(settings.log.model_copy(update={"level": "warning"}))
    try:
        import mcp  # noqa: F401 -- said here, before anything starts
    except ModuleNotFoundError:
        raise ConfigError(
            "sandbox mcp needs the MCP SDK: pip install 'sandbox[mcp]' (or 'sandbox-client[mcp]')"
        ) from None
    tokens = _tokens(args.tokens)
    if args.transport == "http" and not tokens and args.host not in _LOOPBACK:
        raise ConfigError(
            f"--host {args.host} is not loopback: the MCP HTTP transport needs --tokens "
            f"(or ${TOKENS_VARIABLE}) to listen beyond this machine"
        )
    if tokens and args.transport != "http":
        raise ConfigError("--tokens are for --transport http; stdio is the host's own pipe")
    asyncio.run(_serve(args, settings, tokens))
    return 0


async def _serve(args: argparse.Namespace, settings: Settings, tokens: dict[str, str]) -> None:
    from sandbox.cli.mcp_catalog import catalogs
    from sandbox_client.integrations.mcp import build_server

    api_key = args.api_key or None
    async with _service(args.server, settings) as target:
        server = build_server(
            target,
            catalog=catalogs(settings, [api_key, *tokens.values()]),
            api_key=api_key,
            tokens=tokens or None,
            public_url=f"http://{args.host}:{args.port}",
        )
        if args.transport == "stdio":
            await server.run_stdio_async()
        else:
            await server.run_streamable_http_async(host=args.host, port=args.port)


@asynccontextmanager
async def _service(address: str | None, settings: Settings) -> AsyncIterator[str]:
    """The service's address: `address`, or one served in this process on loopback."""
    if address:
        yield address
        return
    from sandbox.app import SandboxServer

    local = settings.model_copy(
        update={"server": settings.server.model_copy(update={"host": "127.0.0.1", "port": 0})}
    )
    service = SandboxServer(local)
    port = await service.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await service.stop(grace_s=1)


def _tokens(path: Path | None) -> dict[str, str]:
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"--tokens {path}: {exc.strerror}") from None
        source = f"--tokens {path}"
    else:
        text = os.environ.get(TOKENS_VARIABLE, "")
        source = f"${TOKENS_VARIABLE}"
        if not text:
            return {}
    try:
        tokens = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{source} is not JSON: {exc}") from None
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in tokens.items()
    ):
        raise ConfigError(f"{source} must be a JSON object of bearer token -> API key strings")
    if not tokens:
        raise ConfigError(f"{source} lists no token")
    return tokens
