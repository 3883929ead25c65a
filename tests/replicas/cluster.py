"""Several real `sandbox serve` processes on one PostgreSQL journal, each on its own
loopback port and state directory, sharing the checkpoint key by configuration; and
nginx (`grpc_pass`) in front of them when a test needs one address."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import terminate
from tests.postgres import free_port

CHECKPOINT_KEY = "replica-tests-shared-key"


class Replica:
    """One `sandbox serve` child process; restartable on its port."""

    def __init__(self, root: Path, url: str, *, lease_s: float, extra: str = "") -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "sandbox.toml"
        self.config.write_text(
            f"[server]\nport = {self.port}\n[log]\nformat = 'json'\n"
            "[monty]\nmin_workers = 1\nwarm_sessions = 0\n"
            f"[journal]\nstate_dir = '{root / 'state'}'\nurl = '{url}'\n"
            f"checkpoint_key = '{CHECKPOINT_KEY}'\nlease_s = {lease_s}\n{extra}"
        )
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[dict[str, Any]] = []
        self.owner = ""

    def start(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "serve", "--config", str(self.config)],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log.append(_parse(line))
            if self.log[-1].get("address", "").endswith(f":{self.port}"):
                self.owner = str(self.log[-1]["replica"])  # its journal owner id
                break
        else:
            raise AssertionError(f"replica on {self.port} did not start: {self.log[-5:]}")
        stderr = proc.stderr

        def keep_reading() -> None:
            for line in stderr:
                self.log.append(_parse(line))

        threading.Thread(target=keep_reading, daemon=True).start()
        self.proc = proc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it stopped
            terminate(self.proc)

    def health(self) -> int:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(reply.status)


def _parse(line: str) -> dict[str, Any]:
    try:
        parsed = json.loads(line)
    except ValueError:
        return {"raw": line}
    return parsed if isinstance(parsed, dict) else {"raw": line}


def start_all(replicas: list[Replica]) -> None:
    threads = [threading.Thread(target=r.start) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.alive() for r in replicas)


def round_robin_target(replicas: list[Replica]) -> tuple[str, list[tuple[str, Any]]]:
    """One client channel over every replica: gRPC's own round_robin over a static list,
    which skips replicas that stop answering."""
    target = "ipv4:" + ",".join(r.address for r in replicas)
    # A replica that comes back is tried again within half a second (gRPC's default
    # reconnect backoff grows to two minutes).
    return target, [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]


def nginx_problem() -> str | None:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        return "nginx is missing (apt-get install nginx)"
    return None


class Nginx:
    """nginx in front of the replicas at `addresses` (HTTP/2 plaintext, grpc_pass), on a
    free port."""

    def __init__(self, root: Path, addresses: list[str]) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        servers = "".join(
            f"    server {address} max_fails=1 fail_timeout=2s;\n" for address in addresses
        )
        user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
        (root / "nginx.conf").write_text(
            f"{user}worker_processes 1;\ndaemon off;\npid {root / 'nginx.pid'};\n"
            f"error_log {root / 'error.log'} warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"  access_log off;\n  client_body_temp_path {root / 'body'};\n"
            "  upstream replicas {\n" + servers + "    keepalive 32;\n  }\n"
            f"  server {{\n    listen 127.0.0.1:{self.port} http2;\n"
            "    location / {\n      grpc_pass grpc://replicas;\n"
            "      grpc_read_timeout 120s;\n      grpc_send_timeout 120s;\n"
            "      grpc_next_upstream error timeout;\n    }\n  }\n}\n"
        )
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [
                binary,
                "-p",
                str(root),
                "-c",
                str(root / "nginx.conf"),
                "-e",
                str(root / "error.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket_to(self.port):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nginx did not listen: {(root / 'error.log').read_text()}")

    def stop(self) -> None:
        terminate(self.proc)


def socket_to(port: int) -> Any:
    import socket

    return socket.create_connection(("127.0.0.1", port), timeout=1)
