"""Syscalls the sandbox's filter refuses, through a real server: under runc the
supervisor answers them (seccomp user notification), from outside the code's process,
so the attempt is named even when the code has switched off the runner's own audit hook;
gVisor has no user notification, and there the runner's filter refuses them itself."""

from __future__ import annotations

import pytest

from sandbox_client import FailureKind
from tests.backends.container.conftest import Lab

pytestmark = pytest.mark.docker

LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
# The runner's audit hook off: what is seen then is seen from outside.
UNHOOKED = (
    "import gc\nnext(o for o in gc.get_objects() if type(o).__name__ == 'Auditor').active = False\n"
)


def _raising(call: str) -> str:
    return f"if {call} == -1:\n    raise OSError(ctypes.get_errno(), 'refused')\n"


@pytest.mark.parametrize(
    ("call", "attempt", "errno"),
    [
        ("libc.syscall(101, 0, 0, 0, 0)", "call ptrace()", 1),  # raw ptrace
        ("libc.syscall(41, 2, 1, 0)", "open a network socket (AF_INET)", 97),  # raw socket
        # The engine's own seccomp profile refuses this one first (its ERRNO outranks a
        # notification): refused, with the same errno, but seen by no one outside.
        ("libc.syscall(272, 0x10000000)", "", 1),  # unshare a user namespace
    ],
    ids=["ptrace", "socket", "unshare"],
)
@pytest.mark.parametrize("hook", ["on", "off"])
def test_a_refused_syscall_is_named_from_outside_the_code(
    lab: Lab, call: str, attempt: str, errno: int, hook: str
) -> None:
    code = (UNHOOKED if hook == "off" else "") + LIBC + _raising(call)
    result = lab.execute(code)
    failure = result.failure
    assert failure is not None, result
    assert f"[Errno {errno}]" in failure.message
    if lab.runtime == "runsc" or not attempt:
        # Refused all the same, but seen by no one outside the code's process.
        assert failure.kind is FailureKind.RUNTIME_ERROR, failure
        return
    assert failure.kind is FailureKind.POLICY_VIOLATION, failure
    assert failure.details["attempted"].startswith(attempt)


def test_code_cannot_listen_for_its_own_refused_calls(lab: Lab) -> None:
    # A filter of the code's own with a listener (SECCOMP_FILTER_FLAG_NEW_LISTENER) would
    # get the refused calls before the supervisor, and could let them run. The flag is
    # refused before the kernel reads the program (a NULL one: EFAULT, were it read).
    code = (
        LIBC
        + "with_listener = libc.syscall(317, 1, 8, None), ctypes.get_errno()\n"
        + "without = libc.syscall(317, 1, 0, None), ctypes.get_errno()\n"
        + "[with_listener, without]"
    )
    result = lab.execute(code)
    assert result.ok, result.failure
    assert result.result == [[-1, 1], [-1, 14]]  # EPERM; EFAULT (the program is read)
