"""ExecuteStream: output arrives while the code runs, then exactly one result."""

from __future__ import annotations

import asyncio
import time

from sandbox_client import (
    AsyncSandboxClient,
    ExecutionResult,
    FailureKind,
    Limits,
    OutputChunk,
    SandboxClient,
)
from tests.conftest import ServerThread


def test_chunks_arrive_before_the_code_finishes(client: SandboxClient) -> None:
    code = "import time\nprint('first')\ntime.sleep(1)\nprint('second')\n'end'"
    arrivals: list[tuple[float, OutputChunk | ExecutionResult]] = []
    started = time.monotonic()
    for event in client.execute_stream(code, backend="monty"):
        arrivals.append((time.monotonic() - started, event))
    *chunks, (finished_at, final) = arrivals
    assert isinstance(final, ExecutionResult) and final.ok and final.result == "end"
    assert all(isinstance(e, OutputChunk) for _, e in chunks)
    assert "".join(e.text for _, e in chunks if isinstance(e, OutputChunk)) == "first\nsecond\n"
    first_at = chunks[0][0]
    assert finished_at - first_at > 0.5, "the first chunk should arrive before the sleep ends"


def test_stream_reports_failures_as_the_final_event(client: SandboxClient) -> None:
    events = list(
        client.execute_stream("print('x' * 5000)", backend="monty", limits=Limits(output_bytes=100))
    )
    final = events[-1]
    assert isinstance(final, ExecutionResult)
    assert final.failure is not None and final.failure.kind is FailureKind.OUTPUT_LIMIT
    streamed = "".join(e.text for e in events[:-1] if isinstance(e, OutputChunk))
    assert len(streamed) <= 100


def test_stream_request_errors_become_a_failed_result(client: SandboxClient) -> None:
    events = list(client.execute_stream("", backend="monty"))
    assert len(events) == 1
    final = events[0]
    assert isinstance(final, ExecutionResult)
    assert final.failure is not None and final.failure.kind is FailureKind.INVALID_REQUEST


def test_async_client_streams_and_executes(server: ServerThread) -> None:
    async def scenario() -> tuple[list[OutputChunk | ExecutionResult], ExecutionResult]:
        async with AsyncSandboxClient(server.address) as client:
            events = [e async for e in client.execute_stream("print(1)\nprint(2)", backend="monty")]
            single = await client.execute("6 * 7", backend="monty")
            return events, single

    events, single = asyncio.run(scenario())
    assert isinstance(events[-1], ExecutionResult) and events[-1].ok
    assert single.result == 42
