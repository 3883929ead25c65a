"""The ToolHost of a durable tool run: every call the code makes is answered from the
journal when it was answered before (a resume or a replay), else relayed to the client
and its answer journaled before the code sees it. Clock readings and checkpoints go to
the journal too.

A call's arguments are the code's: they are encoded with value_to_json (which never
raises), and a call whose arguments would not fit one message on the wire is answered
here with a ValueError the code sees at the call, never relayed or journaled."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog

from sandbox.backends.tools import CheckpointMismatch, ToolCallRequest, ToolReply
from sandbox.backends.values import value_to_json
from sandbox.durable.checkpoints import answer_mac, checkpoint_mac
from sandbox.durable.journal import Checkpoint, Entry, JournalStore, ToolAnswer

log = structlog.get_logger("sandbox.durable")

# The default cap on one call's encoded arguments: the server's default message size
# less room for the rest of the message.
DEFAULT_MAX_CALL_BYTES = 8 * 1024 * 1024 - 64 * 1024


class ToolRelay(Protocol):
    """One client connection's side of a tool run (the gRPC stream, in production)."""

    def call(self, request: ToolCallRequest) -> Awaitable[ToolReply]:
        """Sends the call to the client; resolves with its answer."""
        ...


class JournalHost:
    """The ToolHost of the run `entry` is the record of: see the module docstring.
    `calls` counts the calls the code made through it, answered from the journal or not."""

    def __init__(
        self,
        store: JournalStore,
        entry: Entry,
        relay: ToolRelay,
        *,
        checkpoint_key: bytes,
        clock: Callable[[], float],
        max_call_bytes: int = DEFAULT_MAX_CALL_BYTES,
    ) -> None:
        self._store = store
        self._tenant = entry.tenant
        self._key = entry.key
        self._recorded: Mapping[int, ToolAnswer] = entry.answers
        self._relay = relay
        self._checkpoint_key = checkpoint_key
        self._clock = clock
        self._max_call_bytes = max_call_bytes
        self.calls = 0

    def ask(self, call: ToolCallRequest) -> Awaitable[ToolReply]:
        self.calls += 1
        encoded = (args_json(call.args), kwargs_json(call.kwargs))
        recorded = self._recorded.get(call.seq)
        if recorded is not None:
            if recorded.name != call.name:
                raise CheckpointMismatch(
                    f"the resumed run called {call.name!r} as call {call.seq}; "
                    f"the journal recorded {recorded.name!r}"
                )
            if (recorded.args_json, recorded.kwargs_json) != encoded:
                # A replay (container runs) that passes other arguments, e.g. ones that
                # depend on the clock: it still gets the answer the journal holds.
                log.warning("replayed call's arguments differ", seq=call.seq, tool=call.name)
            return _answered(reply_from_json(recorded.answer_json))
        size = sum(len(text.encode("utf-8", "surrogatepass")) for text in encoded)
        if size > self._max_call_bytes:
            return _answered(
                ToolReply(
                    error_type="ValueError",
                    error_message=(
                        f"the arguments of this call to {call.name!r} are {size} bytes as "
                        f"JSON; a tool call carries at most {self._max_call_bytes}"
                    ),
                )
            )
        return asyncio.ensure_future(self._relay_and_record(call, encoded))

    async def _relay_and_record(self, call: ToolCallRequest, encoded: tuple[str, str]) -> ToolReply:
        reply = await self._relay.call(call)
        answer = ToolAnswer(
            seq=call.seq,
            name=call.name,
            args_json=encoded[0],
            kwargs_json=encoded[1],
            answer_json=reply_to_json(reply),
        )
        self._store.record_answer(self._tenant, self._key, self._signed(answer), now=self._clock())
        return reply

    def clock(self, n: int, name: str, read: Callable[[], Any]) -> Any:
        # Clock readings share the journal with tool answers, at negative positions.
        recorded = self._recorded.get(-n)
        if recorded is not None:
            if recorded.name != name:
                raise CheckpointMismatch(
                    f"the resumed run read {name!r} as clock reading {n}; "
                    f"the journal recorded {recorded.name!r}"
                )
            return json.loads(recorded.answer_json)
        value = read()
        reading = ToolAnswer(
            seq=-n, name=name, args_json="[]", kwargs_json="{}", answer_json=json.dumps(value)
        )
        self._store.record_answer(self._tenant, self._key, self._signed(reading), now=self._clock())
        return value

    async def checkpoint(self, seq: int, blob: bytes, output: dict[str, Any]) -> None:
        mac = checkpoint_mac(self._checkpoint_key, self._tenant, self._key, seq, blob, output)
        self._store.save_checkpoint(
            self._tenant,
            self._key,
            Checkpoint(seq=seq, blob=blob, mac=mac, output=output),
            now=self._clock(),
        )

    def _signed(self, answer: ToolAnswer) -> ToolAnswer:
        """`answer` with its MAC (checked by Durability.resume_point before any replay)."""
        mac = answer_mac(self._checkpoint_key, self._tenant, self._key, answer)
        return dataclasses.replace(answer, mac=mac)


def _answered(reply: ToolReply) -> asyncio.Future[ToolReply]:
    done: asyncio.Future[ToolReply] = asyncio.get_running_loop().create_future()
    done.set_result(reply)
    return done


def args_json(args: tuple[Any, ...]) -> str:
    return "[" + ", ".join(value_to_json(a) for a in args) + "]"


def kwargs_json(kwargs: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)}: {value_to_json(v)}" for k, v in kwargs.items()) + "}"


def reply_to_json(reply: ToolReply) -> str:
    if reply.error_type:
        error = {"type": reply.error_type, "message": reply.error_message, "kind": reply.error_kind}
        return json.dumps({"error": error})
    return json.dumps({"value": reply.value})


def reply_from_json(text: str) -> ToolReply:
    data = json.loads(text)
    if "error" in data:
        error = data["error"]
        return ToolReply(
            error_type=error["type"], error_message=error["message"], error_kind=error["kind"]
        )
    return ToolReply(value=data["value"])
