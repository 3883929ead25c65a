"""The server's event loop is a setting: uvloop by default, asyncio's own on request."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from pydantic import ValidationError

from sandbox.app import new_event_loop
from sandbox.config import Settings
from sandbox_client import SandboxClient
from tests.conftest import running_server


def test_uvloop_is_the_default() -> None:
    loop = new_event_loop(Settings().server.event_loop)
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_the_server_serves_on_either_loop(kind: str) -> None:
    with running_server(server={"event_loop": kind}) as srv:
        running = srv.call(_running_loop())
        assert isinstance(running, uvloop.Loop) == (kind == "uvloop")
        with SandboxClient(srv.address, timeout_s=30) as client:
            result = client.execute("print(6 * 7)\n6 * 7")
        assert result.ok and result.stdout == "42\n" and result.result_json == "42"


def test_an_unknown_loop_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_SERVER__EVENT_LOOP", "trio")
    with pytest.raises(ValidationError, match="event_loop"):
        Settings()


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()
