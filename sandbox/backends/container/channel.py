"""Frames to and from one container's supervisor (which relays the runner's) over the
container's attach socket: bytes on one side, decoded frames on the other (the
conversation itself is conversation.py's). Blocking; used from worker threads only.

Docker multiplexes a non-TTY container's stdout and stderr on the attach socket as
frames of an 8-byte header (stream, 0, 0, 0, big-endian length) and a payload. The
supervisor speaks JSON lines on stdout; stderr only carries what Python printed before
the supervisor took over (bounded, for diagnostics)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import time
from typing import Any

from sandbox.backends.container.protocol import TYPE, encode_frame

_HEADER = struct.Struct(">BxxxL")
_STDOUT, _STDERR = 1, 2
_DIAGNOSTIC_BYTES = 16 * 1024
_RECV_BYTES = 256 * 1024
# A lone surrogate: a str in CPython (print("\ud800")), but no Unicode text; nothing past
# the channel could encode it (protobuf, pydantic). The runner writes one as the bytes
# "surrogatepass" gives (ED A0-BF xx); any frame can carry one as a JSON escape.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_OR_ESCAPE = re.compile("[\ud800-\udfff]|\\\\u[dD][89a-fA-F]")
REPLACEMENT = "\ufffd"


class ChannelClosed(Exception):
    """The runner's side of the socket ended (the container exited or was killed)."""


class ChannelTimeout(Exception):
    """No frame came before the deadline."""


class ProtocolError(Exception):
    """A line that is not a frame, or the supervisor's word that the runner wrote one
    (a BROKEN frame): the runner never does, its frames are JSON objects with a type,
    each written whole under one lock and bounded below the line cap. The code runs in
    the runner's process and can write to its pipe; garbage there is its doing."""


class StreamError(Exception):
    """The engine's multiplexed stream carried a header no engine writes. The code's
    bytes only ever arrive inside the engine's frames, so this is not its doing."""


def without_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, one for one, as Monty shows it."""
    return _SURROGATE.sub(REPLACEMENT, text)


def _without_surrogates(frame: dict[str, Any]) -> dict[str, Any]:
    """Every string in a decoded frame (keys too) without lone surrogates. Iterative: a
    call frame's arguments may nest as deep as json.loads allows."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return without_surrogates(value)
        if isinstance(value, dict):
            copy: dict[str, Any] = {}
            work.append((value, copy))
            return copy
        if isinstance(value, list):
            items: list[Any] = []
            work.append((value, items))
            return items
        return value

    work: list[tuple[Any, Any]] = []
    top: dict[str, Any] = clean(frame)
    while work:
        source, target = work.pop()
        if isinstance(source, dict):
            for key, item in source.items():
                target[without_surrogates(key)] = clean(item)
        else:
            target.extend(clean(item) for item in source)
    return top


class RunnerChannel:
    def __init__(self, attach: Any, *, max_line_bytes: int) -> None:
        self._attach = attach  # docker-py's SocketIO; keeps the HTTP response alive
        self._sock: socket.socket = getattr(attach, "_sock", attach)
        self.max_line_bytes = max_line_bytes
        self._raw = bytearray()  # undecoded multiplexed bytes
        self._line = bytearray()  # runner stdout not yet ending in a newline
        self._lines: list[bytearray] = []
        self.diagnostics = bytearray()
        self.closed = False

    def send(self, obj: dict[str, Any]) -> None:
        data = encode_frame(obj)
        self._sock.settimeout(30)
        self._sock.sendall(data)

    def looks_alive(self) -> bool:
        """True unless the runner is known gone. A waiting runner sends nothing, so the
        channel being readable at all means it is gone: bytes (its exit frame, or a
        broken protocol) or the end of the stream (the container was killed; recv gives
        b"", which read as alive handed dead pool containers out)."""
        if self.closed:
            return False
        try:
            self._sock.settimeout(0)
            self._sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True  # nothing to read: waiting, as a live runner does
        except OSError:
            return False
        return False

    def read_frame(self, deadline: float) -> dict[str, Any]:
        """The next frame. Raises ChannelTimeout at `deadline` (time.monotonic()),
        ChannelClosed at EOF, ProtocolError on a line that is not a frame, StreamError
        when the engine's stream itself is broken."""
        while not self._lines:
            self._fill(deadline)
        line = self._lines.pop(0)
        size = len(line)
        try:
            # Decoded here, the bytes let go before json reads the text: a long line is
            # held twice at most (json.loads of bytes would hold the bytes, their text and
            # the strings made of it).
            text = line.decode("utf-8", "surrogatepass")
            del line
            frame = json.loads(text)
        except ValueError:  # UnicodeDecodeError too
            raise ProtocolError(f"unreadable frame ({size} bytes)") from None
        if not isinstance(frame, dict) or not isinstance(frame.get(TYPE), str):
            raise ProtocolError("a frame without a type")
        return _without_surrogates(frame) if _SURROGATE_OR_ESCAPE.search(text) else frame

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ChannelTimeout
        self._sock.settimeout(remaining)
        try:
            chunk = self._sock.recv(_RECV_BYTES)
        except TimeoutError:
            raise ChannelTimeout from None
        if not chunk:
            self.closed = True
            raise ChannelClosed
        self._raw += chunk
        self._demux()

    def _demux(self) -> None:
        """Moves whole multiplexed frames out of `_raw`. Their bytes are copied once, into
        the line they belong to (through a memoryview, not a slice per frame): what a run
        holds here is one line, up to max_line_bytes, and one receive."""
        raw = self._raw
        offset = 0
        try:
            with memoryview(raw) as view:
                while len(raw) - offset >= _HEADER.size:
                    stream, size = _HEADER.unpack_from(raw, offset)
                    begin, end = offset + _HEADER.size, offset + _HEADER.size + size
                    if len(raw) < end:
                        break
                    offset = end
                    if stream == _STDOUT:
                        self._split_lines(raw, view, begin, end)
                    elif stream == _STDERR:
                        room = max(_DIAGNOSTIC_BYTES - len(self.diagnostics), 0)
                        self.diagnostics += view[begin : min(end, begin + room)]
        finally:
            del raw[:offset]
        if len(raw) > self.max_line_bytes + _HEADER.size:
            raise StreamError("a multiplexed frame larger than any runner frame")

    def _split_lines(self, raw: bytearray, view: memoryview, begin: int, end: int) -> None:
        while (newline := raw.find(b"\n", begin, end)) >= 0:
            self._line += view[begin:newline]
            self._lines.append(self._line)  # handed over whole, not copied
            self._line = bytearray()
            begin = newline + 1
        self._line += view[begin:end]
        if len(self._line) > self.max_line_bytes:
            raise ProtocolError(f"a frame longer than {self.max_line_bytes} bytes")

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(OSError):
            self._attach.close()
