"""Tool-relay overhead: a Monty script calling a no-op host tool 100 times over the Run
stream, against the Execute round trip measured in the same run.

    python -m bench.tool_relay [--runs 30] [--calls 100] [--n 300]
    python -m bench.tool_relay --container [--runs 10] [--calls 100] [--n 30]

Per call = (run with N calls - run with 0 calls) / N, so the stream set-up, journal
entry and final result are not charged to the calls. Each answered call costs one
relay to the client, one journal write for the answer and one checkpoint (dump + HMAC
+ journal write), which is what durability buys.

--container measures the same in the container backend (needs `make docker`): each
call crosses the runner's frame protocol (container stdout -> engine thread -> event
loop -> client, and back on the container's stdin), with a journal write but no
checkpoint; the baseline is Execute('1+1') in a container from the warm pool. Every run
takes a fresh container, so runs are paced to let the pool refill.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable

from sandbox_client import SandboxClient

from ._server import percentiles, sandbox_server


def noop(i: int) -> int:
    return i


IMAGE = "sandbox-runner:latest"
# Between container runs: long enough for the pool to start a replacement (~0.45 s).
PACE_S = 0.6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=None, help="tool runs of each kind")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--n", type=int, default=None, help="Execute round trips")
    parser.add_argument("--container", action="store_true", help="the container backend")
    args = parser.parse_args()
    if args.container:
        container(args.runs or 10, args.calls, args.n or 30)
    else:
        monty(args.runs or 30, args.calls, args.n or 300)


def loop_codes(calls: int) -> tuple[str, str]:
    loop = "total = 0\nfor i in range({}):\n    total += noop(i)\ntotal"
    return loop.format(calls), loop.format(0)


def container(runs: int, calls: int, n: int) -> None:
    loop_code, empty_code = loop_codes(calls)
    settings = (
        "container.enabled=true",
        "container.pool_size=2",
        f"container.scope=bench-{secrets.token_hex(4)}",
        f"container.image={IMAGE}",
        "monty.min_workers=1",
    )
    with (
        tempfile.TemporaryDirectory() as state,
        sandbox_server(f"journal.state_dir={state}", *settings) as server,
        SandboxClient(server.address, timeout_s=120) as client,
    ):

        def paced(fn: Callable[[], bool]) -> float:
            time.sleep(PACE_S)
            started = time.perf_counter()
            assert fn()
            return time.perf_counter() - started

        def execute() -> bool:
            reply = client.execute("1+1", backend="container", idempotency_key=uuid.uuid4().hex)
            return reply.ok

        def tool_run(code: str) -> Callable[[], bool]:
            def run() -> bool:
                result = client.run_tools(
                    code,
                    tools={"noop": noop},
                    backend="container",
                    idempotency_key=uuid.uuid4().hex,
                )
                assert result.ok, result.failure
                return True

            return run

        for _ in range(3):  # warm-up
            paced(execute), paced(tool_run(loop_code)), paced(tool_run(empty_code))
        execute_samples = [paced(execute) for _ in range(n)]
        full = [paced(tool_run(loop_code)) for _ in range(runs)]
        empty = [paced(tool_run(empty_code)) for _ in range(runs)]

    print(f"container: runs={runs} calls/run={calls} execute n={n} (paced {PACE_S} s)")
    report(calls, full, empty, {"Execute('1+1') in a container": execute_samples})


def monty(runs: int, calls: int, n: int) -> None:
    loop_code, empty_code = loop_codes(calls)

    with (
        tempfile.TemporaryDirectory() as state,
        sandbox_server(f"journal.state_dir={state}", "monty.min_workers=2") as server,
        SandboxClient(server.address, timeout_s=120) as client,
    ):

        def tool_run(code: str) -> float:
            started = time.perf_counter()
            result = client.run_tools(
                code, tools={"noop": noop}, backend="monty", idempotency_key=uuid.uuid4().hex
            )
            elapsed = time.perf_counter() - started
            assert result.ok, result.failure
            return elapsed

        execute_samples = []
        for i in range(n + 50):
            started = time.perf_counter()
            reply = client.execute("1+1", backend="monty", idempotency_key=uuid.uuid4().hex)
            if i >= 50:  # warm-up
                execute_samples.append(time.perf_counter() - started)
            assert reply.ok
        for _ in range(3):
            tool_run(loop_code), tool_run(empty_code)  # warm-up
        full = [tool_run(loop_code) for _ in range(runs)]
        empty = [tool_run(empty_code) for _ in range(runs)]

    with (
        sandbox_server("journal.enabled=false", "monty.min_workers=2") as server,
        SandboxClient(server.address, timeout_s=120) as client,
    ):
        unjournaled = []
        for i in range(n + 50):
            started = time.perf_counter()
            reply = client.execute("1+1", backend="monty")
            if i >= 50:
                unjournaled.append(time.perf_counter() - started)

    print(f"runs={runs} calls/run={calls} execute n={n}")
    executes = {"Execute('1+1') round trip": execute_samples, "Execute, journal off": unjournaled}
    report(calls, full, empty, executes)


def report(
    calls: int, full: list[float], empty: list[float], executes: dict[str, list[float]]
) -> None:
    """Prints the Execute round trips (the first is the ratio's baseline), the median tool
    run with `calls` calls and with none, and the relay's cost per call: their difference
    over `calls`. Samples are in seconds."""
    p50s = []
    for label, samples in executes.items():
        p50, p99 = percentiles(samples)
        p50s.append(p50)
        print(f"{label:<31}p50 {p50:7.3f} ms  p99 {p99:7.3f} ms")
    full_ms, empty_ms = statistics.median(full) * 1000, statistics.median(empty) * 1000
    per_call_ms = (full_ms - empty_ms) / calls
    print(f"{'tool run, 0 calls':<31}p50 {empty_ms:7.3f} ms")
    print(f"{f'tool run, {calls} calls':<31}p50 {full_ms:7.3f} ms")
    print(f"relay overhead per tool call       {per_call_ms:7.3f} ms")
    print(f"ratio per call / Execute p50       {per_call_ms / p50s[0]:5.2f}x")


if __name__ == "__main__":
    main()
