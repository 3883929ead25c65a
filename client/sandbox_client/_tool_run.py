"""What the sync and async clients share for tool runs (the Run RPC): declaring tools,
building the stream's messages, turning a tool's return or exception into an answer,
and reading the server's events. No I/O here."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from .protocol.convert import result_from_proto
from .protocol.models import ExecutionResult, Failure, FailureKind
from .protocol.v1 import sandbox_pb2
from .tools import _CURRENT, Tool, ToolCall, Tools


def is_async_tool(tool: Tool) -> bool:
    return inspect.iscoroutinefunction(tool) or inspect.iscoroutinefunction(
        getattr(tool, "__call__", None)  # noqa: B004 -- an object with `async def __call__`
    )


def tool_specs(tools: Tools) -> list[sandbox_pb2.ToolSpec]:
    return [
        sandbox_pb2.ToolSpec(name=name, json_schema=_schema(tool), is_async=is_async_tool(tool))
        for name, tool in sorted(tools.items())
    ]


def _schema(tool: Tool) -> str:
    """The parameters' JSON schema, where pydantic can derive one; "" where it cannot."""
    try:
        params = inspect.signature(tool).parameters
        properties = {}
        required = []
        for name, param in params.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            annotation = Any if param.annotation is param.empty else param.annotation
            properties[name] = TypeAdapter(annotation).json_schema()
            if param.default is param.empty:
                required.append(name)
        return json.dumps({"type": "object", "properties": properties, "required": required})
    except Exception:  # unannotatable or unintrospectable callables still work as tools
        return ""


def start_message(request: sandbox_pb2.ExecuteRequest, tools: Tools) -> sandbox_pb2.RunRequest:
    return sandbox_pb2.RunRequest(
        start=sandbox_pb2.RunStart(request=request, tools=tool_specs(tools))
    )


@dataclass(frozen=True)
class ToolInvocation:
    call_id: int
    tool: Tool
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    run_key: str = ""  # the run's idempotency key

    @property
    def call(self) -> ToolCall:
        return ToolCall(f"{self.run_key}#{self.call_id}", self.call_id, self.name)


def invocation(call: sandbox_pb2.ToolCall, tools: Tools, run_key: str = "") -> ToolInvocation:
    args = json.loads(call.args_json or "[]")
    kwargs = json.loads(call.kwargs_json or "{}")
    return ToolInvocation(call.call_id, tools[call.name], call.name, args, kwargs, run_key)


class Answers:
    """The answers this client gave, by call key, so that a call a resumed run asks for
    again is answered as before instead of running the tool twice in this process.
    Bounded: the oldest are forgotten first."""

    def __init__(self, keep: int = 4096) -> None:
        self._keep = keep
        self._given: OrderedDict[str, sandbox_pb2.RunRequest] = OrderedDict()
        self._lock = threading.Lock()

    def given(self, inv: ToolInvocation) -> sandbox_pb2.RunRequest | None:
        """The answer already given to `inv`'s call, if any (None without a run key)."""
        with self._lock:
            return self._given.get(inv.call.call_key) if inv.run_key else None

    def keep(self, inv: ToolInvocation, answer: sandbox_pb2.RunRequest) -> sandbox_pb2.RunRequest:
        """Remembers `answer` to `inv`'s call, and returns it."""
        if inv.run_key:
            with self._lock:
                self._given[inv.call.call_key] = answer
                while len(self._given) > self._keep:
                    self._given.popitem(last=False)
        return answer


def answer_value(call_id: int, value: Any) -> sandbox_pb2.RunRequest:
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return answer_error(
            call_id, TypeError(f"the tool returned a value JSON cannot hold: {exc}")
        )
    return sandbox_pb2.RunRequest(
        tool_result=sandbox_pb2.ToolResult(call_id=call_id, value_json=text)
    )


def answer_error(call_id: int, error: BaseException) -> sandbox_pb2.RunRequest:
    """The exception the sandboxed code will see (same type name, where Monty has it).
    A SandboxError's failure kind travels along, so an uncaught one is TOOL_ERROR with
    that kind's retry advice."""
    failure = getattr(error, "failure", None)
    kind = getattr(failure, "kind", None)
    return sandbox_pb2.RunRequest(
        tool_result=sandbox_pb2.ToolResult(
            call_id=call_id,
            error=sandbox_pb2.ToolError(
                exception_type=type(error).__name__,
                # The argument, not str(): KeyError('k') prints as "'k'", and the code's
                # KeyError would quote it again.
                message=_message(error),
                kind=str(kind.value) if kind is not None else None,
            ),
        )
    )


def _message(error: BaseException) -> str:
    if len(error.args) == 1 and isinstance(error.args[0], str):
        return error.args[0]
    return str(error)


def event_of(
    msg: sandbox_pb2.RunResponse,
) -> sandbox_pb2.ToolCall | ExecutionResult | None:
    """A tool call to answer, the final result, or None (output, already in the result)."""
    if msg.HasField("tool_call"):
        return msg.tool_call
    if msg.HasField("result"):
        return result_from_proto(msg.result)
    return None


def call_tool_sync(inv: ToolInvocation, answers: Answers | None = None) -> sandbox_pb2.RunRequest:
    if answers is not None and (given := answers.given(inv)):
        return given
    token = _CURRENT.set(inv.call)
    try:
        value = inv.tool(*inv.args, **inv.kwargs)
        if inspect.iscoroutine(value):
            value = asyncio.run(value)
        answer = answer_value(inv.call_id, value)
    except Exception as error:  # the tool's failure is the code's to handle
        answer = answer_error(inv.call_id, error)
    finally:
        _CURRENT.reset(token)
    return answers.keep(inv, answer) if answers is not None else answer


async def call_tool_async(
    inv: ToolInvocation, answers: Answers | None = None
) -> sandbox_pb2.RunRequest:
    if answers is not None and (given := answers.given(inv)):
        return given
    token = _CURRENT.set(inv.call)  # each answer runs in a task of its own: its own context
    try:
        if is_async_tool(inv.tool):
            value = await inv.tool(*inv.args, **inv.kwargs)
        else:
            # A blocking tool must not stall the other tools' answers (to_thread carries
            # this context, and so the current call, into the thread).
            value = await asyncio.to_thread(inv.tool, *inv.args, **inv.kwargs)
        answer = answer_value(inv.call_id, value)
    except Exception as error:
        answer = answer_error(inv.call_id, error)
    finally:
        _CURRENT.reset(token)
    return answers.keep(inv, answer) if answers is not None else answer


def no_result() -> ExecutionResult:
    return ExecutionResult.failed(
        Failure.of(
            FailureKind.INFRA_UNAVAILABLE,
            "the Run stream ended without a result",
            retry_after_ms=0,
        )
    )
