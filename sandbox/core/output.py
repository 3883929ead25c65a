"""Captures a run's stdout and stderr under one byte cap, forwarding chunks as they come."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

StreamName = Literal["stdout", "stderr"]
OutputSink = Callable[[StreamName, str], None]


class OutputLimitExceeded(Exception):
    """Raised from inside a print callback to stop the run once the cap is reached."""


class OutputCapture:
    """Collects output until `cap_bytes` (UTF-8, both streams together) is reached; keeps
    what fits, marks the stream truncated and raises OutputLimitExceeded for the rest.

    Callable as a print callback; safe to call from the backend's I/O thread."""

    def __init__(self, cap_bytes: int, forward: OutputSink | None = None) -> None:
        self._cap = cap_bytes
        self._used = 0
        self._forward = forward
        self._chunks: dict[StreamName, list[str]] = {"stdout": [], "stderr": []}
        self.truncated: dict[StreamName, bool] = {"stdout": False, "stderr": False}
        self._lock = threading.Lock()

    @property
    def exceeded(self) -> bool:
        return self.truncated["stdout"] or self.truncated["stderr"]

    def __call__(self, stream: StreamName, text: str) -> None:
        with self._lock:
            if self.exceeded:
                raise OutputLimitExceeded
            data = text.encode("utf-8", "surrogatepass")
            room = self._cap - self._used
            if len(data) > room:
                text = data[:room].decode("utf-8", "ignore")
                self.truncated[stream] = True
            self._used += len(text.encode("utf-8", "surrogatepass"))
            if text:
                self._chunks[stream].append(text)
        if text and self._forward is not None:
            self._forward(stream, text)
        if self.exceeded:
            raise OutputLimitExceeded

    def text(self, stream: StreamName) -> str:
        return "".join(self._chunks[stream])
