"""The sandbox runner: the process the code runs in, the child of the sandbox supervisor
(supervisor.py, the container's first process), under a uid of its own. Standard
library only.

The conversation (frames, one JSON object per line) is defined in protocol.py, which
the image ships beside this file: the host's own sandbox/backends/container/protocol.py,
byte for byte, so all sides share one schema, one set of caps and one value_to_json. The
runner speaks it on its stdin and stdout, pipes to the supervisor, which relays it to and
from the host; every frame the runner writes carries the number of the job it is
running.

Tools: each declared name is a function in the code's globals (an `async def` one for an
async tool). Calling it flushes the output produced so far, writes a call frame and
blocks until the host's reply: a value, or an exception raised in the code where the
tool was called (the tool's own builtin exception type when CPython has one, else
RuntimeError("Type: message")). Arguments must be JSON values (TypeError otherwise).
Calls are relayed one at a time, in call order: async tools the code gathers run one
after another here, not concurrently. With "seed", `random` is seeded with it, so a run
the host replays after a crash draws the same numbers; the clock is not pinned.

The container is the security boundary; the seccomp filter here narrows the kernel
surface further (the supervisor answers and records the calls it refuses, where the
kernel lets it listen), and the audit hook classifies: it records what the policy
forbids so that a failure it caused is reported as a policy violation, not a plain
exception, and refuses the imports the policy denies. User code runs in this process
and can forge frames on its pipe, read the replies off its stdin or rewrite the runner
itself; that lies about its own job or breaks its own session, never another job: the
supervisor takes a job's frames only while that job runs, numbers them itself, and
writes what only it can know (the runner's death, refused syscalls), and the host
checks every call frame against the tools it declared and the calls it has seen."""

from __future__ import annotations

import ast
import builtins
import codecs
import contextlib
import errno
import fcntl
import io
import json
import linecache
import os
import resource
import select
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from types import CodeType, FrameType
from typing import Any

from protocol import (
    CODE_FILENAME,
    FATAL_STATUS,
    JOB,
    MAX_FRAMES,
    MAX_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    MAX_SOURCE_CHARS,
    OUTPUT_CHUNK_CHARS,
    REPLY,
    RESULT,
    TYPE,
    call_frame,
    encode_frame,
    fatal_frame,
    memory_frame,
    output_frame,
    ready_frame,
    value_to_json,
    where_frame,
)

WORKDIR = "/workspace"
# Where code may create or change files; everything else is read-only in the container.
WRITABLE_ROOTS = ("/tmp", WORKDIR, "/dev/shm", "/dev/null")
PRIVATE_FD_MIN = 200  # the protocol's fds, out of the way of the code's own
FLUSH_BYTES = OUTPUT_CHUNK_CHARS  # pending output written out at once
FLUSH_AFTER_S = 0.02
# A job running this long starts saying where it is, then at most this often (when the
# line changes): what a run stopped at its time limit names as its line.
LOCATE_AFTER_S = 0.5
LOCATE_EVERY_S = 0.2
CO_COROUTINE = 0x80  # inspect.CO_COROUTINE: the code awaits at top level
# Frames asyncio's loop adds under code that awaits at top level; not the code's own.
ASYNC_FRAMES = 15
TOOL_SEQ_ATTR = "_sandbox_tool_seq"  # marks an exception raised as a tool's answer
AF_UNIX = 1  # socket.AF_UNIX; the runner does not import socket (a policy may deny it)

# Syscalls denied outright (errno EPERM): debugging other processes, the kernel's
# namespace, mount, keyring, BPF, perf and module machinery. Docker's own profile denies
# most of these too; this is the policy's filter, applied whatever the engine does.
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsmount", "fsconfig", "fspick", "mount_setattr",
    "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key",
    "unshare", "setns",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
)  # fmt: skip
# libc wrappers whose lookup through ctypes is an attempt at one of the above.
DENIED_LIBC_NAMES = frozenset(DENIED_SYSCALLS) | {"umount", "ptrace"}
# CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
# CLONE_NEWNET: creating namespaces is what unshare does, through clone.
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                         0x20000000, 0x40000000)  # fmt: skip


# seccomp(2)'s SECCOMP_SET_MODE_FILTER and SECCOMP_FILTER_FLAG_NEW_LISTENER: a filter of
# the code's own with a listener it answers would see the calls this filter hands to the
# supervisor first (the newest filter's notification wins) and could let them run.
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 8
_FILTER: list[Any] = []  # the loaded filter, kept: libseccomp keeps its notify fd's number


def apply_seccomp(notify_socket: int | None) -> bool:
    """Loads the filter. With `notify_socket` (a socket to the supervisor), the refused
    calls go to the supervisor (SECCOMP_RET_USER_NOTIF), which records each and answers
    it with its errno, from outside this process; the listener's fd goes to it and is
    closed here. Where the kernel or runtime has no user notification (gVisor), they are
    refused here (SECCOMP_RET_ERRNO). Returns whether the supervisor listens."""
    import seccomp  # Debian's python3-seccomp: libseccomp's own bindings

    if notify_socket is not None:
        try:
            f = _filter(seccomp, lambda err: seccomp.NOTIFY)
            f.load()
        except (RuntimeError, ValueError, OSError):
            pass  # no SECCOMP_RET_USER_NOTIF here
        else:
            _FILTER.append(f)
            _send_fd(notify_socket, f.get_notify_fd())
            return True
        os.close(notify_socket)
    f = _filter(seccomp, seccomp.ERRNO)
    f.load()
    _FILTER.append(f)
    return False


def _send_fd(sock_fd: int, fd: int) -> None:
    import _socket  # socket's C half, not socket itself (a policy may deny it)

    sock = _socket.socket(fileno=sock_fd)
    rights = fd.to_bytes(4, sys.byteorder, signed=True)
    sock.sendmsg([b"n"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
    sock.close()
    os.close(fd)


def _filter(seccomp: Any, refuse: Any) -> Any:
    """The filter, with `refuse(errno)` the action for each refused call."""
    deny = refuse(errno.EPERM)
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        # Skipped where it is not a syscall on this architecture or libseccomp version.
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            f.add_rule(deny, name)
    # Only local (AF_UNIX) sockets: no IP, netlink, packet or vsock, even where the
    # network namespace would have let them exist.
    not_unix = seccomp.Arg(0, seccomp.NE, AF_UNIX)
    f.add_rule(refuse(errno.EAFNOSUPPORT), "socket", not_unix)
    for flag in CLONE_NAMESPACE_FLAGS:
        f.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    new_listener = (SECCOMP_FILTER_FLAG_NEW_LISTENER,) * 2
    f.add_rule(
        seccomp.ERRNO(errno.EPERM),
        "seccomp",
        seccomp.Arg(0, seccomp.EQ, SECCOMP_SET_MODE_FILTER),
        seccomp.Arg(1, seccomp.MASKED_EQ, *new_listener),
    )
    # clone3 passes its flags in memory, where seccomp cannot look; ENOSYS makes libc
    # fall back to clone, which the rules above do check.
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    # A syscall through another ABI (i386's `int 0x80`, an x32 number) matches no rule:
    # libseccomp's default for it kills only the calling thread, which left the run
    # hanging until its time limit. Kill the whole process (libseccomp API level 3 and
    # up), or trap: SIGSYS, whose default action ends the process too, where the
    # runtime reports a lower level (gVisor). The host reads death by SIGSYS as
    # POLICY_VIOLATION.
    badarch = seccomp.KILL_PROCESS if seccomp.get_api() >= 3 else seccomp.TRAP
    f.set_attr(seccomp.Attr.ACT_BADARCH, badarch)
    return f


class Emitter:
    """Writes protocol frames to the supervisor; batches output chunks into few frames.
    Each carries the number of the job running when it is written (`job`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.job: int | None = None
        self._lock = threading.RLock()
        self._pending: list[tuple[str, str]] = []
        self._pending_bytes = 0

    def frame(self, obj: dict[str, Any]) -> None:
        self.write(encode_frame(self.stamped(obj)))

    def stamped(self, obj: dict[str, Any]) -> dict[str, Any]:
        return obj if self.job is None else {**obj, JOB: self.job}

    def write(self, data: bytes) -> None:
        """One encoded frame, whole."""
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]

    def output(self, stream: str, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._pending and self._pending[-1][0] == stream:
                self._pending[-1] = (stream, self._pending[-1][1] + text)
            else:
                self._pending.append((stream, text))
            self._pending_bytes += len(text)
            # The pump thread flushes the rest every FLUSH_AFTER_S.
            if self._pending_bytes >= FLUSH_BYTES:
                self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending, self._pending_bytes = self._pending, [], 0
            for stream, text in pending:
                # Bounded frames keep the host's line buffer bounded.
                for start in range(0, len(text), OUTPUT_CHUNK_CHARS):
                    self.frame(output_frame(stream, text[start : start + OUTPUT_CHUNK_CHARS]))


class TextStream(io.TextIOBase):
    """sys.stdout / sys.stderr: text goes straight to the emitter, in order."""

    def __init__(self, name: str, fd: int, emitter: Emitter) -> None:
        self._name = name
        self._fd = fd
        self._emitter = emitter
        self.buffer = ByteStream(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "strict"

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._emitter.output(self._name, text)
        return len(text)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False


class ByteStream(io.RawIOBase):
    """sys.stdout.buffer: bytes decoded as UTF-8 (invalid bytes replaced)."""

    def __init__(self, text: TextStream) -> None:
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: Any) -> int:
        data = bytes(data)
        self._text.write(self._decoder.decode(data))
        return len(data)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._text.fileno()


class FdPump:
    """Forwards what is written to fds 1 and 2 directly (child processes, os.write)."""

    def __init__(self, emitter: Emitter, locator: Locator) -> None:
        self._emitter = emitter
        self._locator = locator
        self._lock = threading.Lock()
        self._readers: dict[int, tuple[str, Any]] = {}
        for target, name in ((1, "stdout"), (2, "stderr")):
            r, w = os.pipe()
            os.dup2(w, target)
            os.close(w)
            os.set_blocking(r, False)
            fcntl.fcntl(r, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
            self._readers[r] = (name, codecs.getincrementaldecoder("utf-8")("replace"))
        threading.Thread(target=self._run, name="fd-pump", daemon=True).start()

    def _run(self) -> None:
        fds = list(self._readers)
        while True:
            ready, _, _ = select.select(fds, [], [], FLUSH_AFTER_S)
            self.drain(ready)
            self._emitter.flush()
            self._locator.tick()

    def drain(self, fds: list[int] | None = None) -> None:
        with self._lock:
            for fd in self._readers if fds is None else fds:
                name, decoder = self._readers[fd]
                while True:
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    if not chunk:
                        break
                    self._emitter.output(name, decoder.decode(chunk))


class Locator:
    """While a job runs long, tells the host the line of the code the main thread is at
    (the innermost frame of the code itself, under whatever library it called into),
    each time it changes. Ticked by the pump's thread (no thread of its own: the pids
    minimum leaves the runner none to spare); it needs nothing from the code but the
    interpreter's turn, which a pure-Python loop gives up every switch interval."""

    def __init__(self, emitter: Emitter) -> None:
        self._emitter = emitter
        self._main = threading.main_thread().ident
        self._current_frames = sys._current_frames  # the code may replace sys's own
        self._started: float | None = None
        self._next = 0.0
        self._said: tuple[int, str] | None = None
        self.memory_bytes = 0  # the job's cap; its peak is said once past half of it
        self._peak_said = False

    def running(self, yes: bool) -> None:
        self._said = None
        self._peak_said = False
        self._started = time.monotonic() if yes else None

    def tick(self) -> None:
        if self._started is not None and not self._peak_said and self.memory_bytes:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            if peak * 2 >= self.memory_bytes:
                self._peak_said = True
                self._emitter.frame(memory_frame(peak))
        started, now = self._started, time.monotonic()
        if started is None or now - started < LOCATE_AFTER_S or now < self._next:
            return
        self._next = now + LOCATE_EVERY_S
        with contextlib.suppress(Exception):  # a frame torn down as we look
            self._tell(self._current_frames().get(self._main))

    def _tell(self, frame: FrameType | None) -> None:
        while frame is not None and frame.f_code.co_filename != CODE_FILENAME:
            frame = frame.f_back
        if frame is None or self._started is None:
            return
        line, function = frame.f_lineno or 0, frame.f_code.co_name
        if (line, function) == self._said or line <= 0:
            return
        self._said = (line, function)
        source = (linecache.getline(CODE_FILENAME, line) or "").strip()[:MAX_SOURCE_CHARS]
        name = "" if function == "<module>" else function[:MAX_NAME_CHARS]
        self._emitter.frame(where_frame(line, name, source))


class Auditor:
    """The audit hook, while code runs: refuses the imports the policy denies (see
    ImportGuard) and records attempts at what else the policy forbids."""

    def __init__(self) -> None:
        self.active = False
        self.attempts: list[str] = []
        self.imports = ImportGuard()

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "import":
            self.imports.check(args[0], sys._getframe(1))
            return
        check = _CHECKS.get(event)
        if check is not None:
            attempt = check(args)
            if attempt and len(self.attempts) < 20:
                self.attempts.append(_clip(attempt))


class ImportGuard:
    """The policy's denied imports, held at import time. CPython raises the `import`
    audit event each time a module is loaded, whatever the route (`import`,
    `__import__`, importlib, pydoc.locate, pkgutil.resolve_name, `_imp` itself); this
    refuses the load, with an ImportError (so code that probes for an optional module
    goes on without it), when it is the code's request.

    A denied name `N` covers `N`, its submodules `N.*`, and `_N` with its submodules:
    CPython's name for a module's C half (`_ctypes` for ctypes, `_socket` for socket), a
    second way to the same thing.

    Whose request a load is: the frames below the import are searched outward. The
    code's own frame makes it the code's. So does the end of the search: while the code
    runs, nothing else imports. The standard library acts for whoever called it:
    `multiprocessing.sharedctypes` loading ctypes is the code loading ctypes. Two kinds
    of frame make a load a library's own instead, when its source names the module:
    a third-party package installed in the image (pandas imports ctypes), and the
    standard library for the modules it is built on (MACHINERY: inspect, dataclasses
    and asyncio import importlib's submodules, subprocess imports _posixsubprocess).
    A module loaded before the code starts (builtins, posix) is not loaded again: for
    those, the host's static check is what names an attempt. Code that rewrites the
    runner's own objects can switch this off for its own runs; the container, not
    this, is the boundary."""

    MACHINERY = ("importlib", "_posixsubprocess")

    def __init__(self) -> None:
        self.denied: frozenset[str] = frozenset()
        # What was refused this job: (denied name, the ImportError raised for it).
        self.refused: list[tuple[str, ImportError]] = []
        stdlib = os.path.dirname(os.__file__)
        self._stdlib = stdlib + "/"
        self._third_party = tuple(
            p.rstrip("/") + "/"
            for p in sys.path
            if p.endswith(("site-packages", "dist-packages")) and not p.startswith(self._stdlib)
        )

    def covering(self, module: str) -> str | None:
        """The denied name that covers `module`, if any."""
        parts = module.split(".")
        for end in range(1, len(parts) + 1):
            prefix = ".".join(parts[:end])
            for name in (prefix, prefix[1:] if prefix.startswith("_") else None):
                if name and name in self.denied:
                    return name
        return None

    def check(self, module: Any, frame: FrameType | None) -> None:
        if not self.denied or not isinstance(module, str):
            return
        denied = self.covering(module)
        if denied is None or self._library_dependency(module, frame):
            return
        shown = repr(denied) if module == denied else f"{denied!r} ({module})"
        # No `name`: helpers read an ImportError naming the module they asked for as
        # "there is no such module" and carry on (pydoc.locate returns None).
        exc = ImportError(f"the sandbox policy denies importing {shown}")
        if len(self.refused) < 20:
            self.refused.append((denied, exc))
        raise exc

    def _library_dependency(self, module: str, frame: FrameType | None) -> bool:
        top = module.partition(".")[0]
        while frame is not None:
            code = frame.f_code
            if code.co_filename == CODE_FILENAME:
                return False
            if module in code.co_names or top in code.co_names:
                where = self._origin(frame)
                if where == "third-party" or (where == "stdlib" and top in self.MACHINERY):
                    return True
            frame = frame.f_back
        return False

    def _origin(self, frame: FrameType) -> str:
        """Where the frame's code was loaded from: "stdlib", "third-party" or "" (a
        module the code made up, source it compiled under any file name, frozen code)."""
        filename = frame.f_code.co_filename
        module = sys.modules.get(frame.f_globals.get("__name__") or "")
        if getattr(module, "__dict__", None) is not frame.f_globals:
            return ""
        if filename == f"<frozen {getattr(module, '__name__', '')}>":
            # Compiled into the interpreter (os, runpy, importlib.util, ...).
            return "stdlib" if getattr(module.__spec__, "origin", "") == "frozen" else ""
        if getattr(module, "__file__", None) != filename:
            return ""
        if filename.startswith(self._third_party):
            return "third-party"
        return "stdlib" if filename.startswith(self._stdlib) else ""


def _outside(path: Any) -> bool:
    if isinstance(path, int):
        return False
    try:
        text = os.fsdecode(path)
    except TypeError:
        return False
    full = os.path.normpath(os.path.join(os.getcwd(), text))
    return not any(full == root or full.startswith(root + "/") for root in WRITABLE_ROOTS)


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _check_open(args: tuple[Any, ...]) -> str | None:
    path, mode, flags = args
    writes = bool(set(mode or "") & set("wax+")) if mode is not None else bool(flags & _WRITE_FLAGS)
    return f"write to {os.fsdecode(path)!r}" if writes and _outside(path) else None


def _check_path_change(verb: str) -> Any:
    def check(args: tuple[Any, ...]) -> str | None:
        return f"{verb} {os.fsdecode(args[0])!r}" if args and _outside(args[0]) else None

    return check


def _check_socket(args: tuple[Any, ...]) -> str | None:
    family = args[1] if len(args) > 1 else None
    if family in (AF_UNIX, -1, None):
        return None
    return f"open a network socket ({_family_name(family)})"


def _family_name(family: Any) -> str:
    socket = sys.modules.get("socket")  # loaded when the code made its socket through it
    try:
        return str(socket.AddressFamily(family).name) if socket else str(family)
    except ValueError:
        return str(family)


def _check_address(verb: str) -> Any:
    def check(args: tuple[Any, ...]) -> str | None:
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) == AF_UNIX:
            return None
        return f"{verb} {address!r}"

    return check


_CHECKS: dict[str, Any] = {
    "open": _check_open,
    "os.remove": _check_path_change("delete"),
    "os.rmdir": _check_path_change("delete"),
    "os.rename": _check_path_change("rename"),
    "os.mkdir": _check_path_change("create directory"),
    "os.chmod": _check_path_change("change mode of"),
    "os.chown": _check_path_change("change owner of"),
    "os.truncate": _check_path_change("truncate"),
    "os.symlink": lambda args: f"link to {os.fsdecode(args[1])!r}" if _outside(args[1]) else None,
    "os.link": lambda args: f"link to {os.fsdecode(args[1])!r}" if _outside(args[1]) else None,
    "shutil.rmtree": _check_path_change("delete"),
    "socket.__new__": _check_socket,
    "socket.connect": _check_address("connect to"),
    "socket.bind": _check_address("bind to"),
    "socket.sendto": _check_address("send to"),
    "socket.getaddrinfo": lambda args: f"resolve host {args[0]!r}",
    "socket.gethostbyname": lambda args: f"resolve host {args[0]!r}",
    "socket.gethostbyaddr": lambda args: f"resolve address {args[0]!r}",
    "ctypes.dlsym": lambda args: (
        f"call {args[1]}() through ctypes" if str(args[1]) in DENIED_LIBC_NAMES else None
    ),
}


def _frames(tb: Any, source: list[str]) -> list[dict[str, Any]]:
    frames = []
    for summary in traceback.extract_tb(tb):
        if summary.filename != CODE_FILENAME:
            continue
        line = summary.lineno or 0
        text = source[line - 1] if 0 < line <= len(source) else ""
        frames.append(
            {
                "line": line,
                "column": (summary.colno or 0) + 1 if summary.colno is not None else 0,
                "end_line": summary.end_lineno or 0,
                "end_column": (summary.end_colno or 0) + 1 if summary.end_colno is not None else 0,
                "function_name": "" if summary.name == "<module>" else _clip(summary.name),
                "source_line": text[:MAX_SOURCE_CHARS],
            }
        )
    return frames[-MAX_FRAMES:]


def _error(
    exc: BaseException, source: list[str], refused: Sequence[tuple[str, ImportError]] = ()
) -> dict[str, Any]:
    os_error = False
    denied_import = ""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        os_error = os_error or isinstance(link, OSError)
        # The ImportError the guard raised refusing a denied module.
        denied_import = denied_import or next((n for n, e in refused if e is link), "")
        link = link.__cause__ or link.__context__
    module = type(exc).__module__
    error = {
        "type": _clip(type(exc).__name__),
        "module": _clip(module) if isinstance(module, str) else "",
        "message": _message(exc),
        "frames": _frames(exc.__traceback__, source),
        "os_error": os_error,
    }
    if denied_import:
        error["denied_import"] = _clip(denied_import)
    try:
        seq = vars(exc).get(TOOL_SEQ_ATTR)
    except Exception:  # an exception class with no __dict__, or a hostile one
        seq = None
    if type(seq) is int and 0 < seq < 2**31:
        # Raised as a tool's answer (the host checks that call really failed so). The
        # code can set the mark too: bounded, so the frame still encodes.
        error["tool_seq"] = seq
    return error


def _exit_status(code: Any) -> int:
    """The process status `raise SystemExit(code)` gives CPython: an int as a C long
    taken modulo 256 (255 for one past a C long, 10**5000 say), 1 for anything else
    (printed), 0 for None. Always small: a huge int has no JSON text past 4300 digits."""
    if code is None:
        return 0
    if not isinstance(code, int):
        return 1
    return code & 0xFF if -(2**63) <= code < 2**63 else 255


def _text(value: Any) -> str:
    """str(value), clipped, for what the code chooses to show; never raises."""
    try:
        text = str(value)
    except Exception as exc:  # str() of a huge int, or a hostile __str__
        return f"<{type(value).__name__}: str() raised {type(exc).__name__}>"
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def _clip(text: str) -> str:
    return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 3] + "..."


def _message(exc: BaseException) -> str:
    return _text(exc)


class Runner:
    def __init__(self) -> None:
        # The protocol keeps the original stdin/stdout on private, close-on-exec fds; the
        # code's fds 0, 1 and 2 become /dev/null and the pump's pipes.
        self.job_in = os.fdopen(fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, PRIVATE_FD_MIN), "rb")
        self.emitter = Emitter(fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, PRIVATE_FD_MIN))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        self.auditor = Auditor()
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.base_depth = 0
        self.value_cap = 1 << 20
        self.max_call_bytes = 1 << 20
        self.tool_seq = 0  # calls made by the current job
        self._call_lock = threading.Lock()

    def start(self, notify_socket: int | None) -> None:
        try:
            apply_seccomp(notify_socket)
        except Exception as exc:
            self.emitter.frame(fatal_frame(f"seccomp: {type(exc).__name__}: {exc}"))
            raise SystemExit(FATAL_STATUS) from exc
        self.locator = Locator(self.emitter)
        self.pump = FdPump(self.emitter, self.locator)
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self._in_forked_child)
        sys.stdout = TextStream("stdout", 1, self.emitter)
        sys.stderr = TextStream("stderr", 2, self.emitter)
        sys.addaudithook(self.auditor)
        self.base_depth = _depth(sys._getframe())
        self.emitter.frame(ready_frame(os.getpid()))

    def _in_forked_child(self) -> None:
        """A child the code forked writes plain text to fds 1 and 2, which the parent's
        pump forwards, and never touches the protocol fds (whose locks may be held by a
        thread that does not exist in the child)."""
        os.close(self.emitter.fd)
        os.close(self.job_in.fileno())
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115

    def serve(self) -> None:
        while True:
            line = self.job_in.readline()
            if not line:
                return
            job = json.loads(line)
            seq = job.get("seq")
            self.emitter.job = seq if type(seq) is int else None
            result = self.run(job)
            self.emitter.frame(result)
            if not job.get("keep"):
                return

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        code: str = job["code"]
        source = code.splitlines()
        lines = [s + "\n" for s in source]
        linecache.cache[CODE_FILENAME] = (len(code), None, lines, CODE_FILENAME)
        self.namespace.update(job.get("inputs") or {})
        self.tool_seq = 0
        for name, is_async in (job.get("tools") or {}).items():
            self.namespace[name] = self._tool(str(name), bool(is_async))
        if job.get("seed") is not None:
            import random

            random.seed(int(job["seed"]))
        sys.stdin = io.StringIO(job.get("stdin", ""))
        limits = job.get("limits", {})
        depth = int(limits.get("max_recursion_depth", 1000))
        self.value_cap = int(limits.get("output_bytes", 1 << 20))
        self.max_call_bytes = int(limits.get("max_call_bytes", 1 << 20))
        self.locator.memory_bytes = int(limits.get("memory_bytes", 0))
        # The runner's own frames sit below the code's; they do not count against it.
        sys.setrecursionlimit(depth + self.base_depth + 10)
        self.auditor.attempts = []
        self.auditor.imports.denied = frozenset(job.get("denied_imports") or ())
        self.auditor.imports.refused = []
        usage_before = _cpu_s()
        result: dict[str, Any] = {TYPE: RESULT, "ok": True, "exit_code": 0}
        try:
            body, tail = _compile(code)
        except SyntaxError as exc:
            result.update(ok=False, exit_code=1, error=_syntax_error(exc))
        except (ValueError, MemoryError, RecursionError) as exc:  # null bytes, huge sources
            result.update(ok=False, exit_code=1, error=_error(exc, source))
        else:
            result.update(self._execute(body, tail, source))
            if os.getpid() != self.pid:
                # A child the code forked, returning into the runner: it has no result
                # of its own to report.
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(0 if result.get("ok", True) else 1)
        finally:
            sys.setrecursionlimit(1000 + self.base_depth)
        self._flush_output()
        result["blocked"] = list(self.auditor.attempts)
        result["usage"] = {
            "cpu_ms": round((_cpu_s() - usage_before) * 1000),
            "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        return result

    def _execute(self, body: CodeType, tail: CodeType | None, source: list[str]) -> dict[str, Any]:
        value: Any = None
        awaits = (body.co_flags | (tail.co_flags if tail else 0)) & CO_COROUTINE
        run_loop: Any = None
        if awaits:
            import asyncio  # the runner's own import, before the guard is on

            run_loop = asyncio.run
        refused = self.auditor.imports.refused
        self.auditor.active = True
        self.locator.running(True)
        try:
            if awaits:
                value = _run_awaiting(body, tail, self.namespace, run_loop)
            else:
                exec(body, self.namespace)
                if tail is not None:
                    value = eval(tail, self.namespace)
        except SystemExit as exc:
            status = _exit_status(exc.code)
            if status == 0:
                return {}
            error = _error(exc, source, refused)
            error["message"] = "" if isinstance(exc.code, int) else _text(exc.code)
            return {"ok": False, "exit_code": status, "error": error}
        except BaseException as exc:
            return {"ok": False, "exit_code": 1, "error": _error(exc, source, refused)}
        finally:
            self.auditor.active = False
            self.locator.running(False)
        if value is None:
            return {}
        try:
            shown = value_to_json(value)
        except BaseException as exc:  # a __repr__ that exhausts memory, say
            return {"ok": False, "exit_code": 1, "error": _error(exc, source)}
        size = len(shown.encode("utf-8", "surrogatepass"))
        if size > self.value_cap:
            return {"value_bytes": size}
        return {"value": shown}

    def _flush_output(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self.pump.drain()
        self.emitter.flush()

    # -- tools ----------------------------------------------------------------------

    def _tool(self, name: str, is_async: bool) -> Any:
        """The function the code calls for tool `name`."""
        call = self.call_tool

        if is_async:
            # Awaiting it relays the call then and there (one at a time, see above).
            async def tool(*args: Any, **kwargs: Any) -> Any:
                return call(name, args, kwargs)

        else:

            def tool(*args: Any, **kwargs: Any) -> Any:
                return call(name, args, kwargs)

        tool.__name__ = tool.__qualname__ = name
        return tool

    def call_tool(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Relays one call to the host and returns its answer, or raises it."""
        if os.getpid() != self.pid:
            raise RuntimeError(f"{name}() cannot be called from a child process")
        with self._call_lock:  # threads of the code take turns
            seq = self.tool_seq + 1
            frame = self.emitter.stamped(call_frame(seq, name, list(args), kwargs))
            try:
                data = encode_frame(frame, strict=True)
            except (TypeError, ValueError, RecursionError) as exc:
                raise TypeError(f"{name}() takes JSON values only: {exc}") from None
            if len(data) > self.max_call_bytes:
                raise ValueError(
                    f"{name}() arguments are {len(data)} bytes as JSON; "
                    f"at most {self.max_call_bytes} can be sent"
                )
            self.tool_seq = seq
            self._flush_output()  # what the code printed before the call comes first
            self.emitter.write(data)
            reply = self._read_reply(seq)
        error = reply.get("error")
        if isinstance(error, dict):
            raise _tool_exception(error, seq)
        return reply.get("value")

    def _read_reply(self, seq: int) -> dict[str, Any]:
        line = self.job_in.readline()
        if not line:
            os._exit(FATAL_STATUS)  # the host is gone; nobody is left to report to
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or reply.get(TYPE) != REPLY or reply.get("seq") != seq:
            self.emitter.frame(fatal_frame(f"expected the reply to call {seq}, got {line[:200]!r}"))
            os._exit(FATAL_STATUS)
        return reply


def _tool_exception(error: dict[str, Any], seq: int) -> Exception:
    """The exception a tool's error answer raises in the code: the tool's own type where
    it is a builtin exception (so `except KeyError` works), else RuntimeError("Type:
    message"), as in Monty."""
    type_name = str(error.get("type") or "RuntimeError")
    message = str(error.get("message") or "")
    cls = getattr(builtins, type_name, None) if type_name.isidentifier() else None
    exc: Exception | None = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        with contextlib.suppress(Exception):  # a constructor that wants more arguments
            exc = cls(message)
    if exc is None:
        exc = RuntimeError(f"{type_name}: {message}")
    setattr(exc, TOOL_SEQ_ATTR, seq)
    return exc


def _run_awaiting(
    body: CodeType, tail: CodeType | None, namespace: dict[str, Any], run_loop: Any
) -> Any:
    """Runs code that awaits at top level (as Monty and notebooks allow) on a fresh event
    loop (asyncio.run), the trailing expression in the same loop."""
    sys.setrecursionlimit(sys.getrecursionlimit() + ASYNC_FRAMES)  # run() puts it back

    async def main() -> Any:
        started = eval(body, namespace)  # a coroutine when the body awaits, else None
        if body.co_flags & CO_COROUTINE:
            await started
        if tail is None:
            return None
        value = eval(tail, namespace)
        return (await value) if tail.co_flags & CO_COROUTINE else value

    return run_loop(main())


def _compile(code: str) -> tuple[CodeType, CodeType | None]:
    """The code as a module, with a trailing expression split off so its value is kept."""
    tree = ast.parse(code, CODE_FILENAME, "exec")
    tail = None
    last = tree.body[-1] if tree.body else None
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    if isinstance(last, ast.Expr):
        tree.body.pop()
        tail = compile(ast.Expression(last.value), CODE_FILENAME, "eval", flags=flags)
    return compile(tree, CODE_FILENAME, "exec", flags=flags), tail


def _syntax_error(exc: SyntaxError) -> dict[str, Any]:
    line = exc.lineno or 0
    return {
        "type": type(exc).__name__,
        "module": "builtins",
        "message": exc.msg,
        "frames": [
            {
                "line": line,
                "column": exc.offset or 0,
                "end_line": exc.end_lineno or 0,
                "end_column": exc.end_offset or 0,
                "function_name": "",
                "source_line": (exc.text or "").rstrip("\n")[:MAX_SOURCE_CHARS],
            }
        ],
        "syntax": True,
        "os_error": False,
    }


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _depth(frame: FrameType | None) -> int:
    depth = 0
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


def main() -> None:
    # --notify-fd N: a socket to the supervisor, for the filter's listener.
    args = sys.argv[1:]
    notify = int(args[1]) if args[:1] == ["--notify-fd"] else None
    runner = Runner()
    runner.start(notify)
    try:
        runner.serve()
    except BaseException:
        # A runner bug, or a job it cannot read: say so, rather than die without a frame.
        runner.emitter.frame(fatal_frame(traceback.format_exc()[-4000:]))
        os._exit(FATAL_STATUS)
    # Threads (the pump, the code's own) must not keep a finished single-use run alive.
    os._exit(0)


if __name__ == "__main__":
    main()
