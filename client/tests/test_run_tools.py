"""client.run_tools(): one attempt of a tool run over the Run stream, on both clients,
against the real test server; and run(tools=...) making its attempts through it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from conftest import ServerThread

from sandbox_client import (
    AsyncSandboxClient,
    ExecutionResult,
    FailureKind,
    SandboxClient,
)
from sandbox_client.recovery import Outcome


def test_run_tools_answers_the_code_and_returns_a_result(client: SandboxClient) -> None:
    calls: list[tuple[int, int]] = []

    def add(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    result = client.run_tools("add(2, 3) * 10", tools={"add": add}, backend="monty")
    assert isinstance(result, ExecutionResult)
    assert result.ok, result.failure
    assert result.result == 50
    assert calls == [(2, 3)]


def test_run_tools_makes_one_attempt_and_returns_the_failure(client: SandboxClient) -> None:
    calls = 0

    def flaky() -> int:
        nonlocal calls
        calls += 1
        raise ValueError("the weather service is down")

    result = client.run_tools("flaky()", tools={"flaky": flaky})
    assert result.failure is not None and result.failure.kind is FailureKind.TOOL_ERROR
    assert result.failure.exception_type == "ValueError"
    assert calls == 1  # no recovery here: run() is the one that retries and repairs


def test_run_with_tools_makes_each_attempt_through_run_tools(
    client: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[dict[str, Any]] = []
    real = client.run_tools

    def spy(code: str, **kwargs: Any) -> ExecutionResult:
        attempts.append(kwargs)
        return real(code, **kwargs)

    monkeypatch.setattr(client, "run_tools", spy)
    tools = {"double": lambda x: 2 * x}
    outcome = client.run("double(21)", tools=tools, idempotency_key="k-run-tools")
    assert isinstance(outcome, Outcome) and outcome.result.result == 42
    assert len(attempts) == 1
    assert attempts[0]["tools"] is tools
    assert attempts[0]["idempotency_key"] == "k-run-tools"


async def test_async_run_tools_answers_gathered_calls_concurrently(
    server: ServerThread,
) -> None:
    async def fetch(url: str) -> int:
        await asyncio.sleep(0.5)
        return len(url)

    code = (
        "import asyncio\n"
        "async def main():\n"
        "    return await asyncio.gather(fetch('a.example'), fetch('bb.example'))\n"
        "await main()"
    )
    async with AsyncSandboxClient(server.address, timeout_s=60) as client:
        started = time.monotonic()
        result = await client.run_tools(code, tools={"fetch": fetch}, backend="monty")
        took = time.monotonic() - started
    assert result.ok, result.failure
    assert result.result == [9, 10]
    assert took < 0.9  # the two 0.5 s calls overlapped (one after the other: 1 s)


def test_an_unknown_option_is_a_type_error(client: SandboxClient) -> None:
    # The options are a TypedDict, which nothing checks when the code runs; a typo must
    # still fail loudly, as a misspelt keyword argument would.
    with pytest.raises(TypeError, match="'backnd'"):
        client.run_tools("1", tools={}, backnd="monty")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'backnd'"):
        client.execute("1", backnd="monty")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'backnd'"):
        client.execute_stream("1", backnd="monty")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'backnd'"):
        client.run("1", backnd="monty")  # type: ignore[call-arg]
