"""Execute(print(1)) on the container backend against `docker run`, in the same run.

    python -m bench.container_roundtrip [--n 100] [--docker-n 20] [--seconds 60]
                                        [--pool 4] [--runtime runc]

Prints ratios, since these machines are noisy:
- Execute p50/p99 with the warm pool vs `docker run --rm IMAGE python3 -c 'print(1)'`
  (target: at least 10x faster at p50). Sequential calls are paced so the pool refills
  between them: this is the latency a caller sees when the pool is not exhausted;
- sustained executions per second at concurrency 8 for --seconds, the pool refilling
  (bounded by how fast the engine starts containers: every execution gets a fresh one);
- containers left once the run settles (must equal the pool size).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import subprocess
import time

import docker
import grpc

from sandbox_client.protocol.service import ServiceStub
from sandbox_client.protocol.v1 import sandbox_pb2

from ._server import percentiles, sandbox_server

CONCURRENCY = 8
IMAGE = "sandbox-runner:latest"
REQUEST = sandbox_pb2.ExecuteRequest(code="print(1)", backend=sandbox_pb2.CONTAINER)
CALL_TIMEOUT_S = 60
# Between paced calls: long enough for a refill (two starts in parallel, ~0.45 s each).
PACE_S = 0.5


def docker_run_samples(n: int, runtime: str) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        out = subprocess.run(
            ["docker", "run", "--rm", "--runtime", runtime, IMAGE, "python3", "-c", "print(1)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        samples.append(time.perf_counter() - started)
        assert out == "1\n", out
    return samples


async def execute_samples(stub: ServiceStub, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        await asyncio.sleep(PACE_S)
        started = time.perf_counter()
        response = await stub.Execute(REQUEST, timeout=CALL_TIMEOUT_S)
        samples.append(time.perf_counter() - started)
        assert response.result.stdout == "1\n", response
    return samples


async def sustained(stub: ServiceStub, seconds: float) -> tuple[int, int]:
    ok = failed = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal ok, failed
        while time.monotonic() < deadline:
            try:
                response = await stub.Execute(REQUEST, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError:
                failed += 1
                continue
            if response.result.stdout == "1\n":
                ok += 1
            else:
                failed += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return ok, failed


def count_containers(scope: str) -> int:
    client = docker.from_env(version="auto")
    try:
        found = client.api.containers(all=True, filters={"label": f"dev.sandbox.scope={scope}"})
        return len(found)
    finally:
        client.close()


async def settle(scope: str, pool: int, timeout_s: float = 60) -> int:
    """Containers of the bench server once removals and refills are done."""
    deadline = time.monotonic() + timeout_s
    count = count_containers(scope)
    while count != pool and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        count = count_containers(scope)
    return count


async def bench(address: str, args: argparse.Namespace, scope: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ServiceStub(channel)  # type: ignore[no-untyped-call]
        await settle(scope, args.pool)
        for _ in range(3):
            # Warm-up: first connections, first imports.
            await stub.Execute(REQUEST, timeout=CALL_TIMEOUT_S)
        exec_p50, exec_p99 = percentiles(await execute_samples(stub, args.n))
        run_p50, run_p99 = percentiles(docker_run_samples(args.docker_n, args.runtime))
        print(f"Execute(print(1)), container [{args.runtime}], warm pool of {args.pool}:")
        print(f"  p50 {exec_p50:7.1f} ms   p99 {exec_p99:7.1f} ms   (n={args.n}, paced)")
        print(f"docker run --rm {IMAGE} python3 -c 'print(1)':")
        print(f"  p50 {run_p50:7.1f} ms   p99 {run_p99:7.1f} ms   (n={args.docker_n})")
        ratio = run_p50 / exec_p50
        verdict = "meets" if ratio >= 10 else "MISSES"
        print(f"  ratio docker run / Execute at p50: {ratio:.1f}x ({verdict} the 10x target)")
        print(f"  ratio docker run / Execute at p99: {run_p99 / exec_p99:.1f}x")

        await settle(scope, args.pool)
        ok, failed = await sustained(stub, args.seconds)
        rate = ok / args.seconds
        print(
            f"sustained, concurrency {CONCURRENCY}, {args.seconds:.0f} s: {rate:.1f} executions/s"
        )
        print(f"  {ok} ok, {failed} not ok (refused at capacity or failed)")
        print(f"  ratio vs sequential docker run: {rate * run_p50 / 1000:.1f}x")
        left = await settle(scope, args.pool)
        verdict = "as it must" if left == args.pool else "SHOULD EQUAL THE POOL SIZE"
        print(f"containers left after the run: {left} (pool size {args.pool}: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--docker-n", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--runtime", choices=("runc", "runsc"), default="runc")
    args = parser.parse_args()
    scope = f"bench-{secrets.token_hex(4)}"
    settings = (
        "container.enabled=true",
        f"container.pool_size={args.pool}",
        f"container.max_concurrency={CONCURRENCY}",
        f"container.runtime={args.runtime}",
        f"container.scope={scope}",
        f"container.image={IMAGE}",
    )
    with sandbox_server(*settings) as server:
        asyncio.run(bench(server.address, args, scope))
    print(f"containers left after the server stopped: {count_containers(scope)} (must be 0)")


if __name__ == "__main__":
    main()
