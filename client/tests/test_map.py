"""map() and as_completed() on both clients, against a real server: one result per
item, input order or completion order, per-item options, the caller's concurrency, and
run()'s recovery per item when asked."""

from __future__ import annotations

import time

import pytest
from conftest import FAST, MiB, ServerThread

from sandbox_client import AsyncSandboxClient, FailureKind, Limits, SandboxClient

NEEDS_300MB = "s = 'a' * (300 * 1024 * 1024)\nlen(s)"
# The first item sleeps longer than the second (the test server has two workers at
# least), so completion order is not input order.
ITEMS = [
    {"code": f"import time\ntime.sleep({seconds})\n{i}", "backend": "monty"}
    for i, seconds in enumerate((0.5, 0.05))
]


def test_map_yields_in_input_order(client: SandboxClient) -> None:
    assert [r.result for r in client.map([f"{i} * 2" for i in range(40)])] == [
        i * 2 for i in range(40)
    ]


def test_as_completed_yields_each_index_once_in_completion_order(client: SandboxClient) -> None:
    pairs = list(client.as_completed(ITEMS))  # type: ignore[arg-type]
    assert all(result.result == index for index, result in pairs)
    assert [index for index, _ in pairs] == [1, 0]


def test_per_item_options_override_the_shared_ones(client: SandboxClient) -> None:
    results = list(
        client.map(
            [
                "x + 1",
                {"code": "x + 1", "inputs": {"x": 100}},
                {"code": "print(input())", "stdin": "hello"},
                {"code": "1", "policy": "no-such-policy"},
            ],
            inputs={"x": 1},
        )
    )
    assert results[0].result == 2
    assert results[1].result == 101
    assert results[2].stdout == "hello\n"
    assert results[3].failure is not None
    assert results[3].failure.kind is FailureKind.INVALID_REQUEST


def test_a_malformed_item_raises_before_anything_is_sent(client: SandboxClient) -> None:
    with pytest.raises(TypeError, match="'code'"):
        list(client.map(["1", {"inputs": {}}]))  # type: ignore[list-item]
    with pytest.raises(TypeError, match="timeout_s"):
        list(client.map([{"code": "1", "timeout_s": 3}]))


def test_concurrency_bounds_the_items_in_flight(client: SandboxClient) -> None:
    sleeper = "import time\ntime.sleep(0.2)\n1"
    started = time.monotonic()
    results = list(client.map([sleeper] * 4, concurrency=1, backend="monty"))
    one_at_a_time = time.monotonic() - started
    started = time.monotonic()
    list(client.map([sleeper] * 4, concurrency=4, backend="monty"))
    together = time.monotonic() - started
    assert all(r.ok for r in results)
    assert one_at_a_time >= 0.8  # four sleeps of 0.2 s, one after another
    assert together < one_at_a_time


def test_recovery_applies_per_item_when_asked(client: SandboxClient) -> None:
    items = ["1 + 1", NEEDS_300MB]
    plain = list(client.map(items, policy="roomy", limits=Limits(memory_bytes=128 * MiB)))
    assert plain[0].result == 2
    assert plain[1].failure is not None and plain[1].failure.kind is FailureKind.MEMORY_LIMIT
    recovered = list(
        client.map(items, policy="roomy", limits=Limits(memory_bytes=128 * MiB), recovery=FAST)
    )
    assert recovered[0].result == 2
    assert recovered[1].result == 300 * MiB  # resized 128 -> 256 -> 512 MiB


def test_recovery_keeps_a_failure_the_code_must_fix(client: SandboxClient) -> None:
    # REPAIR without a repair function, or ESCALATE: the item keeps its failure, and
    # map() raises nothing (no escalation handler is asked).
    results = list(client.map(["1 / 0", "import socket"], recovery=FAST, backend="monty"))
    kinds = [r.failure.kind if r.failure else None for r in results]
    assert kinds[0] is FailureKind.RUNTIME_ERROR
    assert kinds[1] is not None


def test_a_server_that_is_not_there_gives_every_item_a_result() -> None:
    with SandboxClient("127.0.0.1:1", timeout_s=5) as client:
        results = list(client.map(["1", "2", "3"]))
    assert len(results) == 3
    for result in results:
        assert result.failure is not None
        assert result.failure.kind is FailureKind.INFRA_UNAVAILABLE and result.failure.retryable


async def test_async_map_and_as_completed(server: ServerThread) -> None:
    async with AsyncSandboxClient(server.address, timeout_s=60) as client:
        ordered = [r.result async for r in client.map([f"{i} + 10" for i in range(30)])]
        assert ordered == [i + 10 for i in range(30)]
        pairs = [pair async for pair in client.as_completed(ITEMS)]  # type: ignore[arg-type]
        assert [i for i, _ in pairs] == [1, 0]
        recovered = [
            r
            async for r in client.map(
                [NEEDS_300MB], policy="roomy", limits=Limits(memory_bytes=128 * MiB), recovery=FAST
            )
        ]
        assert recovered[0].result == 300 * MiB


async def test_async_map_against_no_server() -> None:
    async with AsyncSandboxClient("127.0.0.1:1", timeout_s=5) as client:
        results = [r async for r in client.map(["1", "2"])]
    assert [r.failure.kind if r.failure else None for r in results] == [
        FailureKind.INFRA_UNAVAILABLE
    ] * 2
