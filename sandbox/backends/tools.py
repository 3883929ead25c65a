"""The tool protocol both backends' tool runs speak: a call the code made, the answer it
gets, the host that answers it, and what a classifier needs to know about an error answer.
No backend's types here; monty_tools and container_tools each drive their own sandbox
against a ToolHost."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, kw_only=True)
class ToolCallRequest:
    seq: int  # 1-based, in the order the code made its calls
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ToolReply:
    """What the code sees: a value, or (error_type set) an exception to raise."""

    value: Any = None
    error_type: str = ""
    error_message: str = ""
    error_kind: str = ""  # the tool's own failure kind, if it reported one


class ToolHost(Protocol):
    def ask(self, call: ToolCallRequest) -> Awaitable[ToolReply]:
        """Starts the call (relayed to the client, or answered from records on a resume)
        and returns its answer to await. Raises CheckpointMismatch when a resumed run
        calls something other than what its records say."""
        ...

    async def checkpoint(self, seq: int, blob: bytes, output: dict[str, Any]) -> None:
        """Keeps the run's state after `seq` answered calls (Monty only: a container run
        is replayed from the start instead)."""
        ...

    def clock(self, n: int, name: str, read: Callable[[], Any]) -> Any:
        """The run's `n`-th clock reading: `read()` (a JSON value) the first time, the
        recorded value when a resumed run reads it again (Monty only: a container's
        clock is not pinned)."""
        ...


class CheckpointMismatch(Exception):
    """A resumed run did not repeat what its journal recorded (CORRUPT_STATE)."""


@dataclass(frozen=True, kw_only=True)
class InjectedToolError:
    """An exception the host raised inside the code as a tool's answer."""

    seq: int
    tool: str
    exception_type: str
    message: str
    kind: str = ""  # the tool's own failure kind, if it reported one
