"""Replicas on a PostgreSQL journal, against baselines measured in the same run.

    python -m bench.replicas [--n 500] [--total 1500]

Needs PostgreSQL's server binaries and nginx (Debian's postgresql and nginx); starts its
own cluster (fsync on) in a temporary directory, all on loopback. Prints:
- keyed Execute p50 with the PostgreSQL journal vs the SQLite journal, calls interleaved
  (target <= 1.3x);
- throughput of keyed Executes (concurrency 16) through nginx over 3 replicas vs nginx
  over 1 replica (on a 2-core machine 3 replicas only share the same 2 cores: the scaling
  claim belongs to bigger machines), and CPU per request (replicas with their Monty
  workers, and PostgreSQL), which is what scaling depends on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from sandbox_client.protocol.service import ServiceStub
from tests.postgres import PostgresServer
from tests.replicas.cluster import Nginx

from ._server import ServerProcess, percentiles, sandbox_server
from .monty_roundtrip import CONCURRENCY, keyed, time_calls

KEY = "bench-shared-checkpoint-key"
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and of its children (a server's Monty workers), living ones."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def postgres_cpu_seconds(pg: PostgresServer) -> float:
    pid = int((pg.data / "postmaster.pid").read_text().split()[0])
    return cpu_seconds(pid)


@contextlib.contextmanager
def replicas(url: str, n: int, state: Path) -> Iterator[list[ServerProcess]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                sandbox_server(
                    f"journal.url={url}",
                    f"journal.checkpoint_key={KEY}",
                    f"journal.state_dir={state / str(i)}",
                    "monty.min_workers=2",
                )
            )
            for i in range(n)
        ]


async def throughput(address: str, total: int, prefix: str) -> float:
    """Keyed Executes per second, CONCURRENCY at a time, each key new."""
    keys = itertools.count()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ServiceStub(channel)
        await stub.Execute(keyed(f"{prefix}-warm"), timeout=30)
        queue = iter(range(total))

        async def worker() -> None:
            for _ in queue:
                reply = await stub.Execute(keyed(f"{prefix}-{next(keys)}"), timeout=30)
                assert reply.result.ok, reply.result

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return total / (time.perf_counter() - started)


def keyed_p50(pg_url: str, n: int, state: Path) -> None:
    with (
        sandbox_server(f"journal.state_dir={state / 'sqlite'}", "monty.min_workers=2") as lite,
        sandbox_server(
            f"journal.url={pg_url}",
            f"journal.checkpoint_key={KEY}",
            f"journal.state_dir={state / 'pg'}",
            "monty.min_workers=2",
        ) as pg,
    ):
        channels = [grpc.insecure_channel(s.address) for s in (lite, pg)]
        stubs = [ServiceStub(c) for c in channels]
        counters = [itertools.count(), itertools.count()]
        sqlite_s, postgres_s = time_calls(
            lambda: stubs[0].Execute(keyed(f"l-{next(counters[0])}"), timeout=30),
            lambda: stubs[1].Execute(keyed(f"p-{next(counters[1])}"), timeout=30),
            n=n,
        )
        for c in channels:
            c.close()
    (l50, l99), (p50, p99) = percentiles(sqlite_s), percentiles(postgres_s)
    print(f"keyed Execute, SQLite journal:     p50 {l50:.2f} ms  p99 {l99:.2f} ms")
    print(f"keyed Execute, PostgreSQL journal: p50 {p50:.2f} ms  p99 {p99:.2f} ms")
    print(f"  ratio p50 PostgreSQL / SQLite: {p50 / l50:.2f}x (target <= 1.3x)")


def scaling(pg: PostgresServer, total: int, state: Path) -> None:
    rates: dict[int, float] = {}
    for n in (1, 3):
        url = pg.database()
        with replicas(url, n, state / f"x{n}") as group:
            nginx = Nginx(state / f"nginx{n}", [s.address for s in group])
            try:
                cpu_before = sum(cpu_seconds(s.pid) for s in group)
                pg_before = postgres_cpu_seconds(pg)
                rates[n] = asyncio.run(throughput(nginx.address, total, f"t{n}"))
                cpu = sum(cpu_seconds(s.pid) for s in group) - cpu_before
                pg_cpu = postgres_cpu_seconds(pg) - pg_before
            finally:
                nginx.stop()
        print(
            f"nginx over {n} replica(s): {rates[n]:.0f} keyed Executes/s; CPU per request: "
            f"replicas {cpu / total * 1000:.2f} ms, PostgreSQL {pg_cpu / total * 1000:.2f} ms"
        )
    print(f"  ratio 3 replicas / 1 replica: {rates[3] / rates[1]:.2f}x (2 cores: no headroom)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--total", type=int, default=1500)
    parser.add_argument("--latency-only", action="store_true", help="skip the nginx part")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    pg = PostgresServer(fsync=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp)
            keyed_p50(pg.database(), args.n, state)
            if not args.latency_only:
                scaling(pg, args.total, state)
    finally:
        pg.close()
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
