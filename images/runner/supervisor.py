"""The sandbox supervisor: the first process of every sandbox container, which the code
cannot reach. Standard library only (libseccomp's bindings name a syscall).

It starts the runner (runner.py, the process the code runs in) as its child, under
another uid: the container starts as root with no capability but CAP_SETUID and
CAP_SETGID, the child drops to CHILD_UID and this process then to SUPERVISOR_UID, so no
capability is left and the code can neither signal this process nor open its /proc
entries (it is non-dumpable too), and the host's channel, this process's stdin and
stdout, is none of the child's fds. As pid 1 it reaps what the code's processes leave.

It relays the conversation (protocol.py). The host's jobs and replies go to the child's
stdin. The child's frames go to the host only while their job runs and only when they
carry its number (what the child writes between jobs, or for an earlier job, is
dropped; a line that is no frame, or a frame without a job number, ends the run as
tampering), re-encoded with the host's job number; a result frame gets this process's
own fields: the syscalls the child's filter handed here (SECCOMP_RET_USER_NOTIF: each is
recorded and refused from outside the code's process; where the kernel cannot hand them
over, gVisor, the child refuses them itself) and whether the code left a thread or a
process running (the host freezes such a session between jobs). When the child dies,
the host gets an exit frame saying how, and this process exits with the child's status:
pid 1's exit ends the container and every process in it.

A host from before the supervisor (jobs without "seq"; the container's user 10001, tini
as pid 1) gets the frames it knows, as the runner wrote them: no job numbers, no exit
frame (the container's exit status says how the runner ended), the child under this
process's own uid."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any, NoReturn

from protocol import (
    CALL,
    FATAL,
    FATAL_STATUS,
    IDLE_LINE_BYTES,
    JOB,
    MEMORY,
    OUTPUT,
    READY,
    RESULT,
    TYPE,
    WHERE,
    broken_frame,
    encode_frame,
    exit_frame,
    fatal_frame,
    line_cap,
    ready_frame,
)

RUNNER = "/opt/sandbox/runner.py"
CHILD_UID = 10001  # the code's (images/Dockerfile's sandbox user)
SUPERVISOR_UID = 10000
READY_TIMEOUT_S = 25.0  # the host gives the container 30 s to say it is ready
POLL_S = 0.05  # how often to reap when nothing else wakes this process, in a job
IDLE_POLL_S = 1.0  # and between jobs
EOF_GRACE_S = 1.0  # from the child's channel closing to its death being reaped
READ_BYTES = 256 * 1024
DIAGNOSTIC_BYTES = 16 * 1024
MAX_SYSCALLS = 20
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
# struct seccomp_notif and seccomp_notif_resp, and their ioctls (linux/seccomp.h).
NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, nr, arch, instruction pointer, args
NOTIF_RESP = struct.Struct("=QqiI")  # id, val, error, flags
IOCTL_NOTIF_RECV = 0xC0502100
IOCTL_NOTIF_SEND = 0xC0182101
FAMILIES = {2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET", 40: "AF_VSOCK"}
# The memory cgroup's count of OOM kills (cgroup v2, then v1).
OOM_COUNTERS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


class Stop(Exception):
    """The supervisor is done: exit with `status`."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Supervisor:
    def __init__(self) -> None:
        self.host_in, self.host_out = 0, 1
        self.legacy = False  # the host sends jobs without "seq"
        self.seq = 0  # the job running, or the last one; 0 before the first
        self.host_seq: int | None = None  # the host's number for it
        self.running = False
        self.keep = True  # the last job asked the child to wait for another
        self.cap = IDLE_LINE_BYTES  # the longest line taken from the child now
        self.syscalls: list[str] = []
        self.host_buf = bytearray()
        self.child_buf = bytearray()
        self.skipping = False  # dropping the rest of an over-long line between jobs
        self.to_child = bytearray()
        self.diagnostics = bytearray()
        self.notify_fd: int | None = None
        self.child_err: int | None = None
        self.eof_at: float | None = None  # when the child's end of its channel closed
        self.threads = 0  # the child's own threads, waiting for a job
        self.oom_kills = _oom_kills()

    # -- start ------------------------------------------------------------------------

    def start(self) -> None:
        # CPython's SIGINT handler would let the code raise KeyboardInterrupt here; as
        # pid 1 a signal without a handler is not even delivered from inside.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        if os.getpid() != 1:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come here
        ours, theirs = socket.socketpair()
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        privileged = os.getuid() == 0
        ids: dict[str, Any] = (
            {"user": CHILD_UID, "group": CHILD_UID, "extra_groups": []} if privileged else {}
        )
        command = [sys.executable, "-s", "-B", RUNNER, "--notify-fd", str(theirs.fileno())]
        try:
            self.child = subprocess.Popen(
                command,
                stdin=stdin_r,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(theirs.fileno(),),
                **ids,
            )
        except OSError as exc:
            self._fatal(f"cannot start the runner: {exc}")
        for fd in (stdin_r, out_w, err_w):
            os.close(fd)
        theirs.close()
        if privileged:
            # The OOM killer takes the code's processes before this one.
            with (
                contextlib.suppress(OSError),
                open(f"/proc/{self.child.pid}/oom_score_adj", "w") as adj,
            ):
                adj.write("1000")
            os.setgroups([])
            os.setresgid(SUPERVISOR_UID, SUPERVISOR_UID, SUPERVISOR_UID)
            os.setresuid(SUPERVISOR_UID, SUPERVISOR_UID, SUPERVISOR_UID)
            libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # a uid change resets it
        self.to_child_fd, self.from_child, self.child_err = stdin_w, out_r, err_r
        for fd in (stdin_w, out_r, err_r, self.host_in):
            os.set_blocking(fd, False)
        ready = self._await_ready()
        # The listener's fd, sent before "ready", or nothing when the child refuses the
        # calls itself (its end is closed either way by now).
        with contextlib.suppress(OSError):
            _, fds, _, _ = socket.recv_fds(ours, 16, 1)
            self.notify_fd = fds[0] if fds else None
        ours.close()
        self.threads = _count(f"/proc/{self.child.pid}/task")
        self._to_host(ready_frame(int(ready.get("pid") or self.child.pid)))

    def _await_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fatal("the runner did not say it was ready")
            fds = [self.from_child] + ([self.child_err] if self.child_err is not None else [])
            readable, _, _ = select.select(fds, [], [], min(remaining, POLL_S))
            if self.child_err in readable:
                self._read_diagnostics()
            if self.from_child in readable and (chunk := _read(self.from_child)) is not None:
                self.child_buf += chunk
                newline = self.child_buf.find(b"\n")
                if newline >= 0:
                    line = bytes(self.child_buf[:newline])
                    del self.child_buf[: newline + 1]
                    try:
                        frame = json.loads(line)
                    except ValueError:
                        frame = None
                    if isinstance(frame, dict) and frame.get(TYPE) == READY:
                        return frame
                    said = frame.get("message") if isinstance(frame, dict) else None
                    self._fatal(str(said or line[:500]))
                if not chunk or len(self.child_buf) > IDLE_LINE_BYTES:
                    self._fatal("the runner ended before it was ready")
            if self._reap() is not None:
                self._fatal("the runner ended before it was ready")

    def _fatal(self, message: str) -> NoReturn:
        """Before "ready": the host reads this as the sandbox failing to start."""
        why = self.diagnostics.decode("utf-8", "replace").strip()[-2000:]
        with contextlib.suppress(OSError):
            self._write_host(fatal_frame(f"{message} {why}".strip()))
        raise Stop(FATAL_STATUS)

    # -- the relay --------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            readable = [self.host_in] + ([] if self.eof_at else [self.from_child])
            if self.notify_fd is not None:
                readable.append(self.notify_fd)
            if self.child_err is not None:
                readable.append(self.child_err)
            writable = [self.to_child_fd] if self.to_child else []
            wait = POLL_S if self.running else IDLE_POLL_S
            ready_r, ready_w, _ = select.select(readable, writable, [], wait)
            if self.notify_fd is not None and self.notify_fd in ready_r:
                self._answer_notification()
            if self.child_err is not None and self.child_err in ready_r:
                self._read_diagnostics()
            if self.from_child in ready_r:
                self._read_child()
            if ready_w:
                self._write_child()
            if self.host_in in ready_r:
                self._read_host()
            status = self._reap()
            if status is not None:
                self._child_ended(status)
            if self.eof_at and time.monotonic() - self.eof_at > EOF_GRACE_S:
                # Alive with its channel closed: only the code closes the runner's end.
                self._broken("the runner's channel was closed")

    def _read_host(self) -> None:
        chunk = _read(self.host_in)
        if chunk is None:
            return
        if not chunk:
            raise Stop(0)  # the host is gone: ending here ends the container
        self.host_buf += chunk
        while (newline := self.host_buf.find(b"\n")) >= 0:
            line = bytes(self.host_buf[: newline + 1])
            del self.host_buf[: newline + 1]
            message = json.loads(line)
            if TYPE in message:  # a reply to a tool call
                if self.running:
                    self.to_child += line
                continue
            self._start_job(message, line)

    def _start_job(self, job: dict[str, Any], line: bytes) -> None:
        seq = job.get("seq")
        self.legacy = type(seq) is not int
        self.host_seq = None if self.legacy else seq
        self.seq += 1  # the child's numbering is this process's (the host's, as a rule)
        if seq != self.seq:
            job["seq"] = self.seq
            line = encode_frame(job)
        self.keep = bool(job.get("keep"))
        self.running = True
        self.syscalls = []
        limits = job.get("limits") or {}
        self.cap = line_cap(int(limits.get("output_bytes") or IDLE_LINE_BYTES))
        self.to_child += line

    def _write_child(self) -> None:
        try:
            written = os.write(self.to_child_fd, self.to_child)
        except BlockingIOError:
            return
        except BrokenPipeError:
            # The child is ending (reaping says how), or the code closed its end.
            self.to_child.clear()
            self.eof_at = self.eof_at or time.monotonic()
            return
        del self.to_child[:written]

    def _read_child(self) -> None:
        chunk = _read(self.from_child)
        if chunk is None:
            return
        if not chunk:
            self.eof_at = time.monotonic()  # dying, or the code closed it (serve() tells)
            return
        self.child_buf += chunk
        while (newline := self.child_buf.find(b"\n")) >= 0:
            line = bytes(self.child_buf[:newline])
            del self.child_buf[: newline + 1]
            if self.skipping:
                self.skipping = False
                continue
            self._child_line(line)
        if len(self.child_buf) > self.cap:
            if self.running:
                self._broken(f"a frame longer than {self.cap} bytes", bytes(self.child_buf))
            self.child_buf.clear()
            self.skipping = True

    def _child_line(self, line: bytes) -> None:
        if not self.running:
            return  # between jobs: no job's
        try:
            frame = json.loads(line)
        except ValueError:
            self._broken(f"unreadable frame ({len(line)} bytes)", line)
        if not isinstance(frame, dict) or not isinstance(frame.get(TYPE), str):
            self._broken("a frame without a type", line)
        kind = frame[TYPE]
        known = kind in (OUTPUT, CALL, RESULT, FATAL, WHERE, MEMORY)
        named = f"a {kind} frame" if known else f"a {kind[:20]!r} frame"
        job = frame.get(JOB)
        if type(job) is not int and self.legacy:
            self._to_host(frame)  # a host from before the supervisor judges it itself
            return
        if type(job) is not int:
            # The runner numbers every frame it writes: this one is the code's.
            said = str(frame.get("message") or "").strip().splitlines()[:1] if kind == FATAL else []
            shown = f": {said[0][:200]!r}" if said else ""
            self._broken(f"{named} without a job number{shown}", forged=True)
        if job != self.seq or not known:
            # An earlier job's, written late (by a thread it left, say), or of a kind
            # the runner never writes: nothing for the host.
            return
        if kind == RESULT:
            self.running = False
            self.cap = IDLE_LINE_BYTES
            for own in ("syscalls", "left_running"):  # this process's fields, not the child's
                frame.pop(own, None)
            if not self.legacy:
                frame["syscalls"] = list(self.syscalls)
                frame["left_running"] = self._left_running()
        self._to_host(frame)

    def _broken(self, message: str, line: bytes = b"", *, forged: bool = False) -> NoReturn:
        """The child wrote to its channel what the runner never writes: the code's doing.
        Its run ends here, as does the container. A host from before the supervisor gets
        the bytes themselves (it reads them as the code's, as it did), or a fatal frame."""
        if self.legacy and line:
            self._write_raw(line[:IDLE_LINE_BYTES] + b"\n")
        else:
            frame = (
                fatal_frame(message) if self.legacy else broken_frame(self.host_seq or 0, message)
            )
            if forged and not self.legacy:
                frame["forged"] = True
            self._write_host(frame)
        raise Stop(FATAL_STATUS)

    def _to_host(self, frame: dict[str, Any]) -> None:
        if self.legacy or self.host_seq is None:
            frame.pop(JOB, None)
        else:
            frame[JOB] = self.host_seq
        self._write_host(frame)

    def _write_host(self, frame: dict[str, Any]) -> None:
        self._write_raw(encode_frame(frame))

    def _write_raw(self, encoded: bytes) -> None:
        data = memoryview(encoded)
        while data:
            try:
                data = data[os.write(self.host_out, data) :]
            except BlockingIOError:
                select.select([], [self.host_out], [], POLL_S)

    def _read_diagnostics(self) -> None:
        assert self.child_err is not None
        chunk = _read(self.child_err)
        if chunk is None:
            return
        if not chunk:
            os.close(self.child_err)
            self.child_err = None
            return
        self.diagnostics += chunk[: max(DIAGNOSTIC_BYTES - len(self.diagnostics), 0)]

    # -- the child's end --------------------------------------------------------------

    def _reap(self) -> int | None:
        """Reaps every process that ended (pid 1 inherits the code's orphans); the
        child's wait status once it has ended."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            if pid == self.child.pid:
                self.child.returncode = status
                return status

    def _child_ended(self, status: int) -> None:
        with contextlib.suppress(OSError):  # what it wrote before it died comes first
            while chunk := _read(self.from_child):
                self.child_buf += chunk
                while (newline := self.child_buf.find(b"\n")) >= 0:
                    line = bytes(self.child_buf[:newline])
                    del self.child_buf[: newline + 1]
                    self._child_line(line)
        signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        mirrored = 128 + signum if signum is not None else (code or 0)
        if not self.running and not self.keep:
            raise Stop(0)  # a single run ended, after its result
        if not self.legacy:
            oom = _oom_kills() > self.oom_kills
            idle = not self.running
            frame = exit_frame(self.seq, status=code, signal=signum, idle=idle, oom=oom)
            frame[JOB] = self.host_seq or 0
            self._write_host(frame)
        raise Stop(mirrored)

    def _left_running(self) -> bool:
        """Whether the code left a thread or a process running after its job."""
        self._reap()
        try:
            others = [
                p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid())
            ]
            return _count(f"/proc/{self.child.pid}/task") > self.threads or others != [
                str(self.child.pid)
            ]
        except OSError:
            return True

    # -- refused syscalls -------------------------------------------------------------

    def _answer_notification(self) -> None:
        """Refuses one call the child's filter handed here, and records it for the job."""
        assert self.notify_fd is not None
        request = bytearray(NOTIF.size)
        try:
            fcntl.ioctl(self.notify_fd, IOCTL_NOTIF_RECV, request, True)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EINTR):  # the caller went away
                os.close(self.notify_fd)  # the child's filter then fails such calls itself
                self.notify_fd = None
            return
        notif_id, _pid, _flags, number, _arch, _ip, *args = NOTIF.unpack(request)
        name = _syscall_name(number)
        error = errno.EAFNOSUPPORT if name == "socket" else errno.EPERM
        reply = bytearray(NOTIF_RESP.pack(notif_id, 0, -error, 0))
        with contextlib.suppress(OSError):  # ENOENT: the caller was killed meanwhile
            fcntl.ioctl(self.notify_fd, IOCTL_NOTIF_SEND, reply, True)
        if self.running and len(self.syscalls) < MAX_SYSCALLS:
            self.syscalls.append(_describe(name, args))


def _describe(name: str, args: list[int]) -> str:
    if name == "socket":
        return f"open a network socket ({FAMILIES.get(args[0], str(args[0]))})"
    if name == "clone":
        return f"create a namespace (clone flags {args[0]:#x})"
    return f"call {name}()"


def _syscall_name(number: int) -> str:
    try:
        import seccomp

        name = seccomp.resolve_syscall(seccomp.Arch.NATIVE, number)
    except Exception:
        return f"syscall {number}"
    return name.decode() if isinstance(name, bytes) else str(name)


def _read(fd: int) -> bytes | None:
    """What `fd` has now: None when nothing yet, b"" at its end."""
    try:
        return os.read(fd, READ_BYTES)
    except BlockingIOError:
        return None


def _count(directory: str) -> int:
    try:
        return len(os.listdir(directory))
    except OSError:
        return 0


def _oom_kills() -> int:
    for path in OOM_COUNTERS:
        try:
            with open(path) as counters:
                for line in counters:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def main() -> None:
    supervisor = Supervisor()
    try:
        supervisor.start()
        supervisor.serve()
    except Stop as stop:
        status = stop.status
    except BaseException:
        import traceback

        with contextlib.suppress(BaseException):
            supervisor._write_host(fatal_frame("supervisor: " + traceback.format_exc()[-2000:]))
        status = FATAL_STATUS
    sys.stdout.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
