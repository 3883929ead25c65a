"""A Run stream is authenticated on its metadata when it opens, before its first message
is read: a stream without credentials that never sends anything is refused
UNAUTHENTICATED at once, and hundreds of them cost the server no memory it keeps."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sandbox.access.tenants import new_api_key
from sandbox_client import SandboxClient
from sandbox_client.protocol.service import ServiceStub
from tests.conftest import terminate

KEY, DIGEST = new_api_key()
MiB = 1024 * 1024


class ServeProcess:
    """`sandbox serve` with one tenant, as a child process whose RSS can be read."""

    def __init__(self, tmp: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        (tmp / "tenants.toml").write_text(
            textwrap.dedent(f"""
                [tenants.t]
                api_key_sha256 = ["{DIGEST}"]
            """)
        )
        config = tmp / "sandbox.toml"
        config.write_text(
            f"[server]\nport = {self.port}\n[log]\nformat = 'json'\nlevel = 'warning'\n"
            f"[monty]\nmin_workers = 1\nwarm_sessions = 0\n"
            f"[tenants]\nfile = '{tmp / 'tenants.toml'}'\n"
            f"[journal]\nstate_dir = '{tmp / 'state'}'\n"
        )
        self.address = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "serve", "--config", str(config)],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with SandboxClient(self.address, api_key=KEY, timeout_s=5) as client:
                if client.execute("1").ok:
                    return
            time.sleep(0.2)  # not listening yet
        raise AssertionError("the server did not start")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        terminate(self.proc, timeout_s=20)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = ServeProcess(tmp_path_factory.mktemp("run-auth"))
    try:
        yield server
    finally:
        server.stop()


async def silent_streams(address: str, count: int, per_channel: int = 50) -> list[float]:
    """Opens `count` Run streams with no credentials that never send a message; returns
    how long each took to be refused (each must be UNAUTHENTICATED)."""

    async def one(stub: ServiceStub) -> float:
        started = time.monotonic()
        call = stub.Run(timeout=30)  # nothing is ever written, and the side stays open
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value
        return time.monotonic() - started

    waits: list[float] = []
    channels = [grpc.aio.insecure_channel(address) for _ in range(-(-count // per_channel))]
    try:
        for channel in channels:
            stub = ServiceStub(channel)
            n = min(per_channel, count - len(waits))
            waits += await asyncio.gather(*(one(stub) for _ in range(n)))
    finally:
        for channel in channels:
            await channel.close()
    return waits


async def test_a_silent_stream_without_credentials_is_refused_at_once(
    serve: ServeProcess,
) -> None:
    (waited,) = await silent_streams(serve.address, 1)
    assert waited < 2.0


async def test_hundreds_of_silent_streams_leave_the_servers_memory_flat(
    serve: ServeProcess,
) -> None:
    await silent_streams(serve.address, 100)  # warm up: allocator pools, channels
    before = serve.rss_bytes()
    waits = await silent_streams(serve.address, 500)
    await asyncio.sleep(0.5)
    after = serve.rss_bytes()
    assert max(waits) < 10.0 and sorted(waits)[len(waits) // 2] < 2.0
    assert after - before < 8 * MiB, f"RSS grew {(after - before) / MiB:.1f} MiB"
    with SandboxClient(serve.address, api_key=KEY, timeout_s=30) as client:
        assert client.execute("print(1)").stdout == "1\n"
