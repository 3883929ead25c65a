"""What a tool can know of the call it answers (tools run in your process, called by the
sandboxed code through `run(tools=...)` / `run_tools()`): `current_tool_call()` gives
its `ToolCall`, whose `call_key` stays the same when a resumed run asks for the same
call again. Answered calls are never repeated after a crash (the journal has them); the
call in flight when the server or client died is asked again (at-least-once), so a tool
with side effects keys them by `call_key`. Within one client, a call asked again is
answered as before without running the tool."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Tool", "ToolCall", "Tools", "current_tool_call"]

# A tool: any callable; an `async def` one is awaited, and the sandboxed code must
# `await` it too (and may gather several, which then run concurrently).
Tool = Callable[..., Any]
Tools = Mapping[str, Tool]


@dataclass(frozen=True)
class ToolCall:
    """The call a tool is answering, from inside the tool (`current_tool_call()`).
    `call_key` names this call of this run for good: a run that resumes after a crash
    asks again, under the same key, for a call whose answer was not recorded in time
    (at-least-once for the call in flight), so a tool with side effects can use it to
    do them once (an idempotency key for the API it calls, say)."""

    call_key: str  # "<the run's idempotency key>#<call_id>"
    call_id: int  # 1-based, in call order, stable across resumes
    name: str


_CURRENT: contextvars.ContextVar[ToolCall | None] = contextvars.ContextVar(
    "sandbox_tool_call", default=None
)


def current_tool_call() -> ToolCall | None:
    """The call the running tool answers (None outside a tool)."""
    return _CURRENT.get()
