"""Tool-relay overhead: a Monty script calling a no-op host tool 100 times over the Run
stream, against the Execute round trip measured in the same run.

    python -m bench.tool_relay [--runs 30] [--calls 100] [--n 300]

Per call = (run with N calls - run with 0 calls) / N, so the stream set-up, journal
entry and final result are not charged to the calls. Each answered call costs one
relay to the client, one journal write for the answer and one checkpoint (dump + HMAC
+ journal write), which is what durability buys.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid

from sandbox_client import SandboxClient

from ._server import percentiles, sandbox_server


def noop(i: int) -> int:
    return i


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    loop_code = f"total = 0\nfor i in range({args.calls}):\n    total += noop(i)\ntotal"
    empty_code = "total = 0\nfor i in range(0):\n    total += noop(i)\ntotal"

    with (
        tempfile.TemporaryDirectory() as state,
        sandbox_server(f"state_dir={state}", "monty_min_workers=2") as server,
        SandboxClient(server.address, timeout_s=120) as client,
    ):

        def tool_run(code: str) -> float:
            started = time.perf_counter()
            result = client._run_tools(
                {"noop": noop}, code, backend="monty", idempotency_key=uuid.uuid4().hex
            )
            elapsed = time.perf_counter() - started
            assert result.ok, result.failure
            return elapsed

        execute_samples = []
        for i in range(args.n + 50):
            started = time.perf_counter()
            reply = client.execute("1+1", backend="monty", idempotency_key=uuid.uuid4().hex)
            if i >= 50:  # warm-up
                execute_samples.append(time.perf_counter() - started)
            assert reply.ok
        for _ in range(3):
            tool_run(loop_code), tool_run(empty_code)  # warm-up
        full = [tool_run(loop_code) for _ in range(args.runs)]
        empty = [tool_run(empty_code) for _ in range(args.runs)]

    with (
        sandbox_server("journal_enabled=false", "monty_min_workers=2") as server,
        SandboxClient(server.address, timeout_s=120) as client,
    ):
        unjournaled = []
        for i in range(args.n + 50):
            started = time.perf_counter()
            reply = client.execute("1+1", backend="monty")
            if i >= 50:
                unjournaled.append(time.perf_counter() - started)

    e50, e99 = percentiles(execute_samples)
    u50, u99 = percentiles(unjournaled)
    full_ms = statistics.median(full) * 1000
    empty_ms = statistics.median(empty) * 1000
    per_call_ms = (full_ms - empty_ms) / args.calls
    print(f"runs={args.runs} calls/run={args.calls} execute n={args.n}")
    print(f"Execute('1+1') round trip     p50 {e50:7.3f} ms  p99 {e99:7.3f} ms")
    print(f"Execute, journal off          p50 {u50:7.3f} ms  p99 {u99:7.3f} ms")
    print(f"tool run, 0 calls             p50 {empty_ms:7.3f} ms")
    print(f"tool run, {args.calls} calls           p50 {full_ms:7.3f} ms")
    print(f"relay overhead per tool call      {per_call_ms:7.3f} ms")
    print(f"ratio per call / Execute p50      {per_call_ms / e50:5.2f}x")


if __name__ == "__main__":
    main()
