"""What every container is made with, and what the code inside can and cannot do."""

from __future__ import annotations

import asyncio
import json

import docker
import pytest

from sandbox.backends.container.backend import ContainerBackend
from tests.backends.container.conftest import LIMITS, assert_healthy, run

pytestmark = pytest.mark.docker


async def test_container_confinement(
    backend: ContainerBackend, engine: docker.DockerClient
) -> None:
    ids = await backend.containers()
    assert ids, "the warm pool should hold containers"
    info = await asyncio.to_thread(engine.api.inspect_container, ids[0])
    host = info["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    # For the supervisor to run the code as 10001 and itself as 10000; both drop them.
    assert sorted(host["CapAdd"]) == ["SETGID", "SETUID"]
    assert host["Init"] is not True  # the supervisor is pid 1
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == host["MemorySwap"] == LIMITS.memory_bytes
    assert host["NanoCpus"] == LIMITS.cpu_millis * 1_000_000
    ulimits = {u["Name"]: u for u in host["Ulimits"]}
    if backend.runtime == "runc":
        assert host["PidsLimit"] == LIMITS.pids
    else:  # gVisor: the code's cap is its kernel's RLIMIT_NPROC; the host's covers the sentry
        assert ulimits["nproc"]["Hard"] == LIMITS.pids
        assert LIMITS.pids < host["PidsLimit"] <= 16 * 1024
    assert set(host["Tmpfs"]) == {"/tmp", "/workspace"}
    assert all("size=" in options for options in host["Tmpfs"].values())
    assert not host.get("Binds") and not info["Mounts"]
    assert host["Runtime"] == backend.runtime
    assert host["LogConfig"]["Type"] == "none"
    assert ulimits["core"]["Hard"] == 0 and ulimits["nofile"]["Hard"] > 0
    assert ulimits["fsize"]["Hard"] <= LIMITS.disk_bytes
    assert info["Config"]["User"] == "0:0"  # until the supervisor has dropped it
    assert info["Config"]["Labels"]["dev.sandbox.owner"] == "sandbox-server"


async def test_inside_the_container(backend: ContainerBackend) -> None:
    code = """
import os, json
def status_of(pid):
    return dict(line.split(':\\t', 1) for line in open(f'/proc/{pid}/status').read().splitlines()
                if ':\\t' in line)
status, supervisor = status_of('self'), status_of(1)
json.dumps({
    "uid": os.getuid(),
    "cap_eff": status["CapEff"].strip(),
    "cap_prm": status["CapPrm"].strip(),
    "supervisor_uid": supervisor["Uid"].split(),
    "supervisor_caps": [supervisor[k].strip() for k in ("CapEff", "CapPrm")],
    "no_new_privs": status.get("NoNewPrivs", "").strip(),
    "seccomp": status.get("Seccomp", "").strip(),
    "interfaces": sorted(os.listdir('/sys/class/net')) if os.path.isdir('/sys/class/net') else [],
    "env_keys": sorted(os.environ),
})
"""
    result = await run(backend, code)
    assert result.ok, result.failure
    seen = json.loads(result.result)
    assert seen["uid"] == 10001
    assert int(seen["cap_eff"], 16) == int(seen["cap_prm"], 16) == 0
    # The supervisor: another uid (real, effective, saved, fs), no capability left.
    assert seen["supervisor_uid"] == ["10000"] * 4
    assert [int(c, 16) for c in seen["supervisor_caps"]] == [0, 0]
    if backend.runtime == "runc":  # gVisor's /proc does not show these two
        assert seen["no_new_privs"] == "1"
        assert seen["seccomp"] == "2"
    assert set(seen["interfaces"]) <= {"lo"}
    assert not any("SECRET" in key or "TOKEN" in key for key in seen["env_keys"])
    await assert_healthy(backend)


@pytest.mark.parametrize(
    ("what", "code"),
    [
        ("ptrace", "libc.ptrace(0, 0, None, None)"),
        ("unshare", "libc.unshare(0x10000000)"),
        ("mount", "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)"),
        ("keyctl", "libc.syscall(250, 0, 0, 0, 0, 0)"),
        ("bpf", "libc.syscall(321, 0, 0, 0)"),
        ("perf_event_open", "libc.syscall(298, 0, 0, -1, -1, 0)"),
        ("setns", "libc.setns(0, 0)"),
    ],
)
async def test_seccomp_denies(backend: ContainerBackend, what: str, code: str) -> None:
    program = (
        "import ctypes, ctypes.util\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"rc = {code}\n"
        "(rc, ctypes.get_errno())"
    )
    result = await run(backend, program)
    assert result.ok, result.failure
    rc, errno = result.result
    assert rc == -1, f"{what} was not denied"
    assert errno in (1, 9, 13, 22, 38), f"{what}: errno {errno}"


async def test_only_unix_sockets(backend: ContainerBackend) -> None:
    code = """
import socket
a, b = socket.socketpair()
a.send(b'ping')
denied = []
for family in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET):
    try:
        socket.socket(family, socket.SOCK_RAW if family == socket.AF_PACKET else socket.SOCK_DGRAM)
    except OSError:
        denied.append(family.name)
[b.recv(4).decode(), denied]
"""
    result = await run(backend, code)
    assert result.ok, result.failure
    assert result.result == ["ping", ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"]]
    await assert_healthy(backend)


async def test_nothing_persists_between_runs(backend: ContainerBackend) -> None:
    write = "open('/tmp/left', 'w').write('x')\nopen('/workspace/left', 'w').write('x')"
    assert (await run(backend, write)).ok
    check = "import os\n[os.path.exists('/tmp/left'), os.path.exists('/workspace/left')]"
    result = await run(backend, check)
    assert result.result == [False, False]
