"""The least a gRPC Execute over AsyncMonty can do: grpc.aio, a Monty pool, health, and
a handler that only checks out a session and runs the code. No policy, limits, output
capture, classification, journal or audit. `python -m bench._floor_server LOOP WORKERS`
prints its address as the first line of stdout."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
import pydantic_monty as pm
from grpc_health.v1 import health, health_pb2_grpc

from sandbox.app import new_event_loop
from sandbox_client.protocol.service import generic_handler
from sandbox_client.protocol.v1 import sandbox_pb2


async def serve(workers: int) -> None:
    async with pm.AsyncMonty(min_processes=workers, max_processes=workers) as pool:

        async def execute(
            request: sandbox_pb2.ExecuteRequest, context: Any
        ) -> sandbox_pb2.ExecuteResponse:
            async with pool.checkout() as session:
                value = await session.feed_run(request.code)
            reply = sandbox_pb2.ExecuteResponse()
            reply.result.ok = True
            reply.result.result_json = repr(value)
            return reply

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((generic_handler({"Execute": execute}),))
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()


def main() -> None:
    loop_kind, workers = sys.argv[1], int(sys.argv[2])
    assert loop_kind in ("uvloop", "asyncio")
    with asyncio.Runner(loop_factory=lambda: new_event_loop(loop_kind)) as runner:  # type: ignore[arg-type]
        runner.run(serve(workers))


if __name__ == "__main__":
    main()
