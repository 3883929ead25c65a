"""Code that kills itself, through a real server under runc and runsc: it is told what
happened at once, with the right advice (not a crash to retry, not a hang to time out)."""

from __future__ import annotations

import contextlib
import time

import pytest

from sandbox_client import FailureKind, RequestRefused
from tests.backends.container.conftest import Lab

pytestmark = pytest.mark.docker

# Real machine code: `mov eax, 20; int 0x80; ret`, i386's getpid through the 32-bit ABI.
INT_80 = """
import ctypes, mmap
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(bytes.fromhex("b814000000cd80c3"))
getpid = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
"""
# x32's getpid: x86-64's number with the x32 bit (0x40000000) set.
X32 = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def getpid():
    return libc.syscall(0x40000000 | 39)
"""
IN_A_THREAD = """
import threading
worker = threading.Thread(target=getpid)
worker.start()
worker.join()
print("survived")
"""


@pytest.mark.parametrize("abi", ["x32", "i386"])
@pytest.mark.parametrize("where", ["main thread", "other thread"])
def test_a_syscall_through_a_foreign_abi_ends_the_run_at_once(
    lab: Lab, abi: str, where: str
) -> None:
    # It killed the calling thread only: the run waited for its whole 10 s budget and
    # was reported as TIMEOUT (which the client retries with twice the limit).
    call = "getpid()" if where == "main thread" else IN_A_THREAD
    code = (X32 if abi == "x32" else INT_80) + call
    started = time.monotonic()
    result = lab.execute(code)
    elapsed = time.monotonic() - started
    assert elapsed < 5, (elapsed, result.failure)
    if abi == "i386" and lab.runtime == "runsc":
        # gVisor runs no 32-bit syscalls at all: `int 0x80` fails in its own kernel,
        # before any filter, and the code goes on with the error it returned.
        assert result.ok, result.failure
        assert result.result is None or result.result < 0
    else:
        failure = result.failure
        assert failure is not None and failure.kind is FailureKind.POLICY_VIOLATION, failure
        assert failure.details["signal"] == "SIGSYS"
        assert not failure.retryable
    assert lab.execute("print(1)").stdout == "1\n"


@pytest.mark.parametrize(
    ("code", "signal_name"),
    [
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "SIGKILL"),
        ("import os\nos.abort()", "SIGABRT"),
        ("import ctypes\nctypes.string_at(0)", "SIGSEGV"),  # a segfault
        ("import signal\nsignal.raise_signal(signal.SIGTERM)", "SIGTERM"),
        # From a thread, and from a process of its own that takes its parent down.
        (
            "import os, signal, threading\n"
            "threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGKILL)).start()\n"
            "import time\ntime.sleep(5)",
            "SIGKILL",
        ),
        (
            "import os, subprocess, sys\n"
            "subprocess.run([sys.executable, '-c', f'import os; os.kill({os.getpid()}, 11)'])\n"
            "import time\ntime.sleep(5)",
            "SIGSEGV",
        ),
    ],
    ids=["sigkill", "abort", "segfault", "sigterm", "sigkill-thread", "sigsegv-child"],
)
def test_code_that_kills_itself_is_its_own_runtime_error(
    lab: Lab, code: str, signal_name: str
) -> None:
    # It was SANDBOX_CRASH, which run() retries: the same code killed itself again.
    started = time.monotonic()
    result = lab.execute(code)
    assert time.monotonic() - started < 5
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR, failure
    assert failure.details["signal"] == signal_name and signal_name in failure.message
    assert not failure.retryable
    assert lab.execute("print(1)").stdout == "1\n"


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL", "SIGSTOP"])
def test_code_cannot_signal_the_supervisor(lab: Lab, signal_name: str) -> None:
    # pid 1 is the supervisor, under another uid: SIGTERM to it ended the container
    # (SANDBOX_CRASH, retried).
    result = lab.execute(f"import os, signal\nos.kill(1, signal.{signal_name})")
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR, failure
    assert failure.exception_type == "PermissionError"
    everyone = lab.execute("import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('here')")
    assert everyone.failure is None or everyone.failure.exception_type == "ProcessLookupError"
    assert lab.execute("print(1)").stdout == "1\n"


def test_code_cannot_reach_the_supervisors_channel_or_memory(lab: Lab) -> None:
    code = """
import os
reached = []
for path, flags in [("/proc/1/fd/0", os.O_RDONLY), ("/proc/1/fd/1", os.O_WRONLY),
                    ("/proc/1/mem", os.O_RDONLY), ("/proc/1/environ", os.O_RDONLY)]:
    try:
        os.close(os.open(path, flags))
        reached.append(path)
    except OSError:
        pass
reached
"""
    result = lab.execute(code)
    assert result.ok, result.failure
    # gVisor lets any process read another's environment, which holds no secret.
    assert [p for p in result.result if p != "/proc/1/environ" or lab.runtime == "runc"] == []


@pytest.mark.parametrize("fd", [200, 201], ids=["jobs", "frames"])
def test_code_that_closes_its_channel_to_the_supervisor_ends_at_once(lab: Lab, fd: int) -> None:
    # The runner's ends of its pipes to the supervisor: its jobs, its frames.
    with lab.client() as client:
        session = client.create_session(backend="container", policy="lab")
        started = time.monotonic()
        first = client.execute(
            f"import os, time\nos.close({fd})\ntime.sleep(0.2)\n'closed'",
            session_id=session.session_id,
        )
        second = client.execute("'next'", session_id=session.session_id)
        assert time.monotonic() - started < 8  # not a wait for the wall budget
        with contextlib.suppress(RequestRefused):
            client.close_session(session.session_id)
    if fd == 201:
        # It cannot report its own run: the code's failure, not one to retry.
        assert first.failure is not None and first.failure.kind is FailureKind.RUNTIME_ERROR
        assert not first.failure.retryable
    elif first.ok:
        # It ran, and the session's interpreter could read no further job.
        assert first.result == "closed"
        assert second.failure is not None and second.failure.kind is FailureKind.CORRUPT_STATE
        assert "between executions" in second.failure.message
    else:
        # The supervisor saw the closed pipe before the run ended (a CI run under load):
        # the code's tampering with its channel, never one to retry.
        assert first.failure is not None, first
        assert first.failure.kind is FailureKind.POLICY_VIOLATION, first.failure
        assert not first.failure.retryable
        assert second.failure is not None and not second.ok
