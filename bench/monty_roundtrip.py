"""Execute('1+1') through gRPC against baselines measured in the same run.

    python -m bench.monty_roundtrip [--n 2000] [--rss-n 10000]

Prints ratios, since these machines are noisy:
- Execute p50 vs a grpc.health.v1.Health/Check round trip to the same server (target <= 2x);
- AUTO's Execute p50 with the divergence routing on vs off (a policy with
  fidelity_routing = false), on code that stays in Monty: '1+1' and a program of the
  correctness corpus's size (target: within noise, ratio ~1.00);
- Execute vs calling the Monty library directly (checkout + feed_run);
- throughput at concurrency 16 vs the raw AsyncMonty library (target >= 0.5x);
- server RSS after 100 and after 10,000 executions (target: within 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pydantic_monty as pm
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandbox.app import new_event_loop
from sandbox.config import Settings
from sandbox_client.protocol.service import ServiceStub
from sandbox_client.protocol.v1 import sandbox_pb2

from ._server import floor_server, percentiles, sandbox_server

CONCURRENCY = 16
REQUEST = sandbox_pb2.ExecuteRequest(code="1+1", backend=sandbox_pb2.MONTY)
# A program like the correctness corpus's (about 400 bytes: parsed on the server's loop,
# below the checker processes' 512), with no construct Monty is known to get wrong.
PROGRAM = """
def running_max(values):
    best, out = None, []
    for v in values:
        if best is None or v > best:
            best = v
        out.append(best)
    return out


def histogram(words):
    counts = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


assert running_max([3, 1, 4, 1, 5]) == [3, 3, 4, 4, 5]
assert histogram("a b a c b a".split())[0] == ("a", 3)
print("OK", sum(len(w) for w in "x yy zzz".split()))
"""
UNROUTED_POLICY = 'name = "unrouted"\nfidelity_routing = false\n'


def auto(code: str, policy: str = "") -> sandbox_pb2.ExecuteRequest:
    return sandbox_pb2.ExecuteRequest(code=code, backend=sandbox_pb2.AUTO, policy=policy)


def keyed(key: str) -> sandbox_pb2.ExecuteRequest:
    request = sandbox_pb2.ExecuteRequest()
    request.CopyFrom(REQUEST)
    request.idempotency_key = key
    return request


def time_calls(*calls: Callable[[], object], n: int) -> list[list[float]]:
    """Samples of each call, taken in turn (a, b, c, a, b, c, ...) so that the machine's
    ups and downs fall on all of them alike."""
    for _ in range(min(200, n)):
        for call in calls:
            call()  # warm-up
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(n):
        for call, taken in zip(calls, samples, strict=True):
            started = time.perf_counter()
            call()
            taken.append(time.perf_counter() - started)
    return samples


async def busy_seconds(make_call: Callable[[], Awaitable[object]], total: int) -> float:
    """Seconds to make `total` calls, CONCURRENCY at a time."""
    queue = iter(range(total))

    async def worker() -> None:
        for _ in queue:
            await make_call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


def library_call(pool: pm.AsyncMonty) -> Callable[[], Awaitable[object]]:
    async def one() -> object:
        async with pool.checkout() as session:
            return await session.feed_run("1+1")

    return one


async def against_library(
    addresses: list[str], n: int, workers: int
) -> tuple[list[float], list[float], float]:
    """(each server's rate, library latency samples, library rate). The rates are
    measured in alternating rounds, so the machine's ups and downs fall on all alike."""
    async with (
        contextlib.AsyncExitStack() as stack,
        pm.AsyncMonty(min_processes=workers, max_processes=workers) as pool,
    ):
        calls = []
        for address in addresses:
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
            calls.append(served_call(ServiceStub(channel)))
        library = library_call(pool)
        for _ in range(200):
            await library()
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            await library()
            samples.append(time.perf_counter() - started)
        for call in calls:
            await busy_seconds(call, 200)
        rounds, per_round = 4, max(1, n // 4)
        seconds = [0.0] * (len(calls) + 1)
        for _ in range(rounds):
            for i, call in enumerate([*calls, library]):
                seconds[i] += await busy_seconds(call, per_round)
    total = rounds * per_round
    return [total / s for s in seconds[:-1]], samples, total / seconds[-1]


def served_call(stub: ServiceStub) -> Callable[[], Awaitable[object]]:
    async def one() -> object:
        return await stub.Execute(REQUEST)

    return one


async def library_rate(n: int, workers: int) -> float:
    async with pm.AsyncMonty(min_processes=workers, max_processes=workers) as pool:
        one = library_call(pool)
        await busy_seconds(one, 200)
        return n / await busy_seconds(one, n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rss-n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure bench/_floor_server.py: gRPC + AsyncMonty and nothing else",
    )
    args = parser.parse_args()
    workers = args.workers

    # The clients and the library baseline run on the server's kind of loop, so the loop's
    # own speed cancels out of the ratios.
    loop_kind = Settings().server.event_loop
    runner = asyncio.Runner(loop_factory=lambda: new_event_loop(loop_kind))
    scratch = tempfile.TemporaryDirectory(prefix="bench-")
    policies = Path(scratch.name) / "policies"
    policies.mkdir()
    (policies / "unrouted.toml").write_text(UNROUTED_POLICY)
    with (
        scratch,
        runner,
        sandbox_server(
            f"monty.min_workers={workers}",
            f"monty.max_workers={workers}",
            f"policies.dir={policies}",
            # A journal of its own: keys of an earlier run (or another server's) would
            # be replays, or fail their integrity check under another key.
            f"journal.state_dir={scratch.name}",
        ) as server,
        floor_server(loop_kind, workers) if args.floor else contextlib.nullcontext() as floor,
    ):
        floor_execute: list[Callable[[], object]] = []
        if floor is not None:
            floor_channel = grpc.insecure_channel(floor)
            floor_execute.append(lambda: ServiceStub(floor_channel).Execute(REQUEST))
        with grpc.insecure_channel(server.address) as channel:
            execute = ServiceStub(channel).Execute
            check = health_pb2_grpc.HealthStub(channel).Check
            health_request = health_pb2.HealthCheckRequest()
            reply = execute(REQUEST)
            assert reply.result.ok and reply.result.result_json == "2", reply
            # Keyed: what SDK callers pay (the client sends an idempotency key, so the
            # server journals each execution).
            keys = (f"bench-{i}" for i in itertools.count())
            health_samples, execute_samples, keyed_samples, *floor_samples = time_calls(
                lambda: check(health_request),
                lambda: execute(REQUEST),
                lambda: execute(keyed(next(keys))),
                *floor_execute,
                n=args.n,
            )
            routing: dict[str, tuple[list[float], list[float]]] = {}
            for label, code in (("'1+1'", "1+1"), ("a program", PROGRAM)):
                routed, unrouted = auto(code), auto(code, "unrouted")
                for request in (routed, unrouted):
                    reply = execute(request)
                    assert reply.result.ok and not reply.result.fidelity_warning, reply
                on, off = time_calls(
                    lambda r=routed: execute(r), lambda r=unrouted: execute(r), n=args.n
                )
                routing[label] = (on, off)

            rss_100 = server.rss_bytes()  # after warm-up: well past 100 executions
            for _ in range(args.rss_n):
                execute(REQUEST)
            rss_after = server.rss_bytes()
        addresses = [server.address, *([floor] if floor is not None else [])]
        (served_rate, *floor_rate), library_samples, library_rate_same_loop = runner.run(
            against_library(addresses, args.n, workers)
        )
    # The library as most callers run it: on asyncio's default loop.
    default_loop_rate = asyncio.run(library_rate(args.n, workers))

    h50, h99 = percentiles(health_samples)
    e50, e99 = percentiles(execute_samples)
    k50, k99 = percentiles(keyed_samples)
    l50, l99 = percentiles(library_samples)
    print(f"workers={workers} n={args.n} concurrency={CONCURRENCY} event loop={loop_kind}")
    print(f"health check      p50 {h50:7.3f} ms  p99 {h99:7.3f} ms")
    print(f"Execute('1+1')    p50 {e50:7.3f} ms  p99 {e99:7.3f} ms")
    print(f"  with a key      p50 {k50:7.3f} ms  p99 {k99:7.3f} ms  (journaled)")
    print(f"Monty library     p50 {l50:7.3f} ms  p99 {l99:7.3f} ms")
    if floor_samples:
        f50, f99 = percentiles(floor_samples[0])
        print(f"floor server      p50 {f50:7.3f} ms  p99 {f99:7.3f} ms  (gRPC + AsyncMonty only)")
    for label, (on, off) in routing.items():
        on50, _ = percentiles(on)
        off50, _ = percentiles(off)
        print(
            f"AUTO {label:<10} p50 routing on {on50:7.3f} ms, off {off50:7.3f} ms: "
            f"ratio {on50 / off50:4.2f}  (target: within noise)"
        )
    print(f"ratio Execute/health p50   {e50 / h50:5.2f}x   (target <= 2.0, aim 1.5)")
    print(f"ratio Execute/library p50  {e50 / l50:5.2f}x")
    print(
        f"throughput server {served_rate:8.0f}/s  library {library_rate_same_loop:8.0f}/s  "
        f"ratio {served_rate / library_rate_same_loop:4.2f}  (target >= 0.5, aim 0.7)"
    )
    print(
        f"           library on asyncio's default loop {default_loop_rate:8.0f}/s  "
        f"ratio {served_rate / default_loop_rate:4.2f}"
    )
    if floor_samples:
        print(
            f"floor server: Execute/health p50 {f50 / h50:5.2f}x, throughput "
            f"{floor_rate[0]:6.0f}/s = {floor_rate[0] / library_rate_same_loop:4.2f} of the "
            f"library; this server does {served_rate / floor_rate[0]:4.2f} of the floor's"
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
