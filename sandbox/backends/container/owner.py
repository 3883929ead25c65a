"""Which server process owns a container, so start-up reaps only what a dead server left.

Two live servers (or two backends in one test process) may share an engine and a scope;
each removes its own containers at shutdown. At start-up a server removes those whose
owner process is gone: on this host, no process with that pid and start time."""

from __future__ import annotations

import os
import socket

OWNER_PROCESS_LABEL = "dev.sandbox.owner-process"


def owner_process() -> str:
    """host:pid:start-time of this process."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def owner_process_gone(label: str) -> bool:
    """True when `label` names a process of this host that no longer runs, or is empty.
    A container from another host is not ours to judge: False."""
    if not label:
        return True
    host, _, rest = label.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return _start_time(int(pid_text)) != started


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # Field 22 (starttime); the command name in parentheses may contain spaces.
            return stat.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return "gone"
