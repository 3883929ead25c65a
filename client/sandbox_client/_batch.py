"""What map() and as_completed() share on both clients: items to Batch requests, the
stream's events, putting results back in input order, and the result of an item the
stream never answered. No I/O here."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Required

import grpc

from ._request import ExecuteOptions, complete, execute_request, failed_result
from .protocol.convert import result_from_proto
from .protocol.models import ExecutionResult, Failure, FailureKind
from .protocol.v1 import sandbox_pb2
from .recovery._models import Abort, Escalation, Resolution

# Items one batch keeps in flight unless told otherwise (the server may grant fewer).
DEFAULT_CONCURRENCY = 16


class BatchItem(ExecuteOptions, total=False):
    """One item of map() / as_completed() given with its own options: `code`, and any of
    execute()'s keywords but `timeout_s` (the batch has one deadline)."""

    code: Required[str]


Item = str | BatchItem


def split(item: Item, defaults: ExecuteOptions) -> tuple[str, ExecuteOptions]:
    """An item's code and its options: the map's own, overridden by the item's."""
    if isinstance(item, str):
        return item, complete(dict(defaults))  # type: ignore[arg-type]
    given = dict(item)
    code = given.pop("code", None)
    if not isinstance(code, str):
        raise TypeError("a batch item is a str of code or a mapping with a 'code' str")
    if "timeout_s" in given:
        raise TypeError("a batch item takes no 'timeout_s': the batch has one deadline")
    return code, complete({**defaults, **given})  # type: ignore[typeddict-item]


@dataclass(frozen=True)
class Prepared:
    """One item as the stream sends it, with its code and options kept for recovery."""

    code: str
    options: ExecuteOptions
    message: sandbox_pb2.BatchItem


def prepare(items: Iterable[Item], defaults: ExecuteOptions) -> list[Prepared]:
    """Every item, numbered from 0 in input order. Built before the stream opens, so a
    malformed item raises here, in the caller."""
    shared: ExecuteOptions = {k: v for k, v in defaults.items() if k != "timeout_s"}  # type: ignore[assignment]
    prepared = []
    for index, item in enumerate(items):
        code, options = split(item, shared)
        options.pop("timeout_s", None)
        message = sandbox_pb2.BatchItem(item_id=index, request=execute_request(code, **options))
        prepared.append(Prepared(code, options, message))
    return prepared


def window_of(msg: sandbox_pb2.BatchResponse) -> int | None:
    """The items the server lets this stream have in flight, if `msg` grants them."""
    return msg.window.items if msg.HasField("window") else None


def answers_of(msg: sandbox_pb2.BatchResponse) -> list[tuple[int, ExecutionResult]]:
    return [(int(r.item_id), result_from_proto(r.result)) for r in msg.results]


class Outbox:
    """Items to send, as many to a message as the credits allow, within a size the
    server takes (a message of several items costs the wire about what one does)."""

    def __init__(self, prepared: list[Prepared]) -> None:
        self._items = (p.message for p in prepared)
        self._spare: sandbox_pb2.BatchItem | None = None

    def message(self, credits: int) -> sandbox_pb2.BatchRequest | None:
        """The next message, of at most `credits` items; None when all are sent."""
        items: list[sandbox_pb2.BatchItem] = []
        size = 0
        while len(items) < credits:
            item = self._spare if self._spare is not None else next(self._items, None)
            self._spare = None
            if item is None:
                break
            item_size = item.ByteSize()
            if items and size + item_size > MESSAGE_BYTES:
                self._spare = item
                break
            items.append(item)
            size += item_size
        return sandbox_pb2.BatchRequest(items=items) if items else None


# Items per message stop growing past this (the server's default limit is 8 MiB).
MESSAGE_BYTES = 1024 * 1024


def unanswered(
    count: int, answered: set[int], error: grpc.RpcError | None
) -> Iterator[tuple[int, ExecutionResult]]:
    """A result for every item the stream did not answer: the stream's failure (the
    server's status, or the transport's), classified as an unary call's would be."""
    for index in range(count):
        if index not in answered:
            yield index, failed_result(error) if error is not None else _no_answer()


def _no_answer() -> ExecutionResult:
    return ExecutionResult.failed(
        Failure.of(
            FailureKind.INFRA_UNAVAILABLE,
            "the Batch stream ended without this item's result",
            retry_after_ms=0,
        )
    )


class InOrder:
    """Results put back in input order: push() as they come, ready ones returned."""

    def __init__(self) -> None:
        self._next = 0
        self._waiting: dict[int, ExecutionResult] = {}

    def push(self, index: int, result: ExecutionResult) -> list[ExecutionResult]:
        self._waiting[index] = result
        ready = []
        while self._next in self._waiting:
            ready.append(self._waiting.pop(self._next))
            self._next += 1
        return ready


def keep_failure(_escalation: Escalation) -> Resolution:
    """A batch item's escalation handler: no one is asked; the item keeps its failure."""
    return Abort()
