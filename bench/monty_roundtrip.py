"""Execute('1+1') through gRPC against baselines measured in the same run.

    python -m bench.monty_roundtrip [--n 2000] [--rss-n 10000]

Prints ratios, since these machines are noisy:
- Execute p50 vs a grpc.health.v1.Health/Check round trip to the same server (target <= 2x);
- Execute vs calling the Monty library directly (checkout + feed_run);
- throughput at concurrency 16 vs the raw AsyncMonty library (target >= 0.5x);
- server RSS after 100 and after 10,000 executions (target: within 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import time
from collections.abc import Awaitable, Callable

import grpc
import pydantic_monty as pm
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandbox.config import Settings
from sandbox.server import new_event_loop
from sandbox_client._proto import sandbox_pb2, sandbox_pb2_grpc

from ._server import percentiles, sandbox_server

CONCURRENCY = 16
REQUEST = sandbox_pb2.ExecuteRequest(code="1+1", backend=sandbox_pb2.MONTY)


def keyed(key: str) -> sandbox_pb2.ExecuteRequest:
    request = sandbox_pb2.ExecuteRequest()
    request.CopyFrom(REQUEST)
    request.idempotency_key = key
    return request


def time_calls(call: Callable[[], object], n: int) -> list[float]:
    for _ in range(min(200, n)):
        call()  # warm-up
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


async def throughput(make_call: Callable[[], Awaitable[object]], total: int) -> float:
    queue = iter(range(total))

    async def worker() -> None:
        for _ in queue:
            await make_call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return total / (time.perf_counter() - started)


async def library_direct(n: int, workers: int) -> tuple[list[float], float]:
    async with pm.AsyncMonty(min_processes=workers, max_processes=workers) as pool:

        async def one() -> object:
            async with pool.checkout() as session:
                return await session.feed_run("1+1")

        for _ in range(200):
            await one()
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            await one()
            samples.append(time.perf_counter() - started)
        rate = await throughput(one, n)
    return samples, rate


async def server_throughput(address: str, n: int) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = sandbox_pb2_grpc.SandboxServiceStub(channel)

        async def one() -> object:
            return await stub.Execute(REQUEST)

        await throughput(one, 200)
        return await throughput(one, n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rss-n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    workers = args.workers

    # The clients and the library baseline run on the server's kind of loop, so the loop's
    # own speed cancels out of the ratios.
    loop_kind = Settings().event_loop
    runner = asyncio.Runner(loop_factory=lambda: new_event_loop(loop_kind))
    with (
        runner,
        sandbox_server(f"monty_min_workers={workers}", f"monty_max_workers={workers}") as server,
    ):
        with grpc.insecure_channel(server.address) as channel:
            execute = sandbox_pb2_grpc.SandboxServiceStub(channel).Execute
            check = health_pb2_grpc.HealthStub(channel).Check
            health_request = health_pb2.HealthCheckRequest()
            reply = execute(REQUEST)
            assert reply.result.ok and reply.result.result_json == "2", reply
            health_samples = time_calls(lambda: check(health_request), args.n)
            execute_samples = time_calls(lambda: execute(REQUEST), args.n)
            # What SDK callers pay: the client sends an idempotency key, so the server
            # journals each execution.
            keys = (f"bench-{i}" for i in itertools.count())
            keyed_samples = time_calls(lambda: execute(keyed(next(keys))), args.n)

            rss_100 = server.rss_bytes()  # after warm-up: well past 100 executions
            for _ in range(args.rss_n):
                execute(REQUEST)
            rss_after = server.rss_bytes()
        served_rate = runner.run(server_throughput(server.address, args.n))
        server.stop()
        library_samples, library_rate = runner.run(library_direct(args.n, workers))
    # The library as most callers run it: on asyncio's default loop.
    _, default_loop_rate = asyncio.run(library_direct(args.n, workers))

    h50, h99 = percentiles(health_samples)
    e50, e99 = percentiles(execute_samples)
    k50, k99 = percentiles(keyed_samples)
    l50, l99 = percentiles(library_samples)
    print(f"workers={workers} n={args.n} concurrency={CONCURRENCY} event loop={loop_kind}")
    print(f"health check      p50 {h50:7.3f} ms  p99 {h99:7.3f} ms")
    print(f"Execute('1+1')    p50 {e50:7.3f} ms  p99 {e99:7.3f} ms")
    print(f"  with a key      p50 {k50:7.3f} ms  p99 {k99:7.3f} ms  (journaled)")
    print(f"Monty library     p50 {l50:7.3f} ms  p99 {l99:7.3f} ms")
    print(f"ratio Execute/health p50   {e50 / h50:5.2f}x   (target <= 2.0, aim 1.5)")
    print(f"ratio Execute/library p50  {e50 / l50:5.2f}x")
    print(
        f"throughput server {served_rate:8.0f}/s  library {library_rate:8.0f}/s  "
        f"ratio {served_rate / library_rate:4.2f}  (target >= 0.5, aim 0.7)"
    )
    print(
        f"           library on asyncio's default loop {default_loop_rate:8.0f}/s  "
        f"ratio {served_rate / default_loop_rate:4.2f}"
    )
    print(
        f"server RSS after warm-up {rss_100 / 2**20:6.1f} MiB, after {args.rss_n} more "
        f"{rss_after / 2**20:6.1f} MiB: {100 * (rss_after / rss_100 - 1):+5.1f}%"
        "  (target within 10%)"
    )


if __name__ == "__main__":
    main()
    # Collect the library pool before interpreter shutdown (pydantic-monty can abort there).
    gc.collect()
