"""The Batch RPC against baselines measured in the same run.

    python -m bench.batch_throughput [--n 4000] [--corpus]

Prints, for `1+1` with 16 in flight:
- the raw AsyncMonty library's rate (checkout + feed_run, 16 tasks);
- the Batch RPC's rate through a `sandbox serve` process (window 16; target >= 0.8x the
  library);
- unary Execute's rate at 16 concurrent calls to the same server (today's path);
measured in alternating rounds, so the machine's ups and downs fall on all alike.
With --corpus, also the 1,565-case correctness corpus (../shared/corpora/correctness)
through the Batch RPC and through unary Execute, 16 in flight, wall time of each.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import pydantic_monty as pm

from sandbox.app import new_event_loop
from sandbox.config import Settings
from sandbox_client.protocol.service import ServiceStub
from sandbox_client.protocol.v1 import sandbox_pb2

from ._server import sandbox_server

CONCURRENCY = 16
ONE_PLUS_ONE = sandbox_pb2.ExecuteRequest(code="1+1", backend=sandbox_pb2.MONTY)
# ../shared/corpora beside the repository, or wherever SANDBOX_CORPORA points (as tests do).
CORPORA = Path(
    os.environ.get("SANDBOX_CORPORA") or Path(__file__).resolve().parents[2] / "shared" / "corpora"
)
CORPUS = CORPORA / "correctness" / "cases.jsonl"

Round = Callable[[int], Awaitable[float]]


def library_round(pool: pm.AsyncMonty) -> Round:
    async def run(n: int) -> float:
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                async with pool.checkout() as session:
                    await session.feed_run("1+1")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return time.perf_counter() - started

    return run


async def batch_seconds(stub: ServiceStub, requests: Sequence[sandbox_pb2.ExecuteRequest]) -> float:
    """Seconds for one Batch call to answer every request, within its window."""
    call = stub.Batch()
    credits = asyncio.Semaphore(0)

    async def send() -> None:
        # As the SDK does: as many items to a message as there are credits.
        sent = 0
        while sent < len(requests):
            await credits.acquire()
            granted = 1
            while not credits.locked():
                await credits.acquire()
                granted += 1
            chunk = requests[sent : sent + granted]
            for _ in range(granted - len(chunk)):
                credits.release()
            await call.write(
                sandbox_pb2.BatchRequest(
                    items=[
                        sandbox_pb2.BatchItem(item_id=sent + i, request=r)
                        for i, r in enumerate(chunk)
                    ]
                )
            )
            sent += len(chunk)
        await call.done_writing()

    started = time.perf_counter()
    sender: asyncio.Task[None] | None = None
    answered = 0
    while (msg := await call.read()) is not grpc.aio.EOF:
        if msg.HasField("window"):
            for _ in range(min(CONCURRENCY, msg.window.items)):
                credits.release()
            sender = asyncio.create_task(send())
            continue
        for answer in msg.results:
            assert answer.result.failure.kind == 0 or requests is not _ONES, answer
            answered += 1
            credits.release()
    assert sender is not None
    await sender
    assert answered == len(requests), (answered, len(requests))
    return time.perf_counter() - started


_ONES: list[sandbox_pb2.ExecuteRequest] = []


def batch_round(stub: ServiceStub) -> Round:
    async def run(n: int) -> float:
        return await batch_seconds(stub, _ONES[:n])

    return run


async def unary_seconds(stub: ServiceStub, requests: Sequence[sandbox_pb2.ExecuteRequest]) -> float:
    todo = iter(requests)

    async def worker() -> None:
        for request in todo:
            await stub.Execute(request)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


def unary_round(stub: ServiceStub) -> Round:
    async def run(n: int) -> float:
        return await unary_seconds(stub, _ONES[:n])

    return run


def corpus_requests() -> list[sandbox_pb2.ExecuteRequest]:
    cases = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    return [sandbox_pb2.ExecuteRequest(code=c["code"], backend=sandbox_pb2.MONTY) for c in cases]


async def measure(address: str, n: int, workers: int, corpus: bool) -> None:
    _ONES.extend([ONE_PLUS_ONE] * n)
    async with (
        grpc.aio.insecure_channel(address) as channel,
        pm.AsyncMonty(min_processes=workers, max_processes=workers) as pool,
    ):
        stub = ServiceStub(channel)
        rounds = {
            "library": library_round(pool),
            "batch": batch_round(stub),
            "unary": unary_round(stub),
        }
        for run in rounds.values():
            await run(300)  # warm-up
        seconds = dict.fromkeys(rounds, 0.0)
        per_round = max(1, n // 4)
        for _ in range(4):
            for name, run in rounds.items():
                seconds[name] += await run(per_round)
        rate = {name: 4 * per_round / s for name, s in seconds.items()}
        print(f"workers={workers} n={4 * per_round} in flight={CONCURRENCY}")
        ratio = {name: r / rate["library"] for name, r in rate.items()}
        print(f"library AsyncMonty '1+1'  {rate['library']:8.0f}/s")
        print(f"Batch RPC                 {rate['batch']:8.0f}/s  ratio {ratio['batch']:4.2f}")
        print(f"unary Execute x16         {rate['unary']:8.0f}/s  ratio {ratio['unary']:4.2f}")
        print("(target: Batch >= 0.8 of the library)")
        if corpus:
            requests = corpus_requests()
            await batch_seconds(stub, requests[:100])
            batch_s = await batch_seconds(stub, requests)
            unary_s = await unary_seconds(stub, requests)
            print(
                f"correctness corpus ({len(requests)} cases, {CONCURRENCY} in flight): "
                f"Batch {batch_s:6.2f} s, unary Execute {unary_s:6.2f} s, "
                f"ratio {unary_s / batch_s:4.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--corpus", action="store_true")
    args = parser.parse_args()
    loop_kind = Settings().server.event_loop
    with (
        asyncio.Runner(loop_factory=lambda: new_event_loop(loop_kind)) as runner,
        sandbox_server(
            f"monty.min_workers={args.workers}",
            f"monty.max_workers={args.workers}",
            f"batch.window={CONCURRENCY}",
        ) as server,
    ):
        runner.run(measure(server.address, args.n, args.workers, args.corpus))
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
    gc.collect()  # the library pool before interpreter shutdown
