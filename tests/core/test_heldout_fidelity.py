"""Held-out programs (tests/heldout.py: seeded set-order and generator programs the
detector's own tests have not seen) through AUTO on a server with Monty only: none may
get a silent wrong answer, i.e. succeed without a fidelity_warning and print other than
CPython does. (With a container to move to, tests/backends/container/
test_divergence_container.py holds AUTO to CPython's exact answers.)"""

from __future__ import annotations

import asyncio
from collections import Counter

from sandbox_client import AsyncSandboxClient, ExecutionResult
from tests.conftest import ServerThread
from tests.corpus import report
from tests.heldout import cpython_answers, programs

SEED = 20261202
COUNT = 400


async def _run_all(address: str, codes: list[str]) -> list[ExecutionResult]:
    limit = asyncio.Semaphore(4)
    async with AsyncSandboxClient(address, timeout_s=60) as client:

        async def one(code: str) -> ExecutionResult:
            async with limit:
                return await client.execute(code)

        return await asyncio.gather(*(one(code) for code in codes))


def test_no_held_out_program_gets_a_silent_wrong_answer(server: ServerThread) -> None:
    generated = list(programs(SEED, COUNT))
    codes = [code for _, code in generated]
    native = cpython_answers(codes)
    results = asyncio.run(_run_all(server.address, codes))
    outcome: Counter[str] = Counter()
    silent = []
    for (family, code), (ok, stdout), result in zip(generated, native, results, strict=True):
        agrees = result.ok == ok and result.stdout == stdout
        warned = bool(result.fidelity_warning)
        outcome[
            f"{family}: {'agrees' if agrees else 'differs'}, {'warned' if warned else 'no warning'}"
        ] += 1
        if not agrees and not warned and result.ok:
            silent.append((code, result.stdout, stdout))
    report(f"held-out fidelity (AUTO, Monty only, seed {SEED}): {dict(sorted(outcome.items()))}")
    # The generator makes programs that diverge: the test would say nothing otherwise.
    assert sum(n for key, n in outcome.items() if "differs" in key) >= COUNT // 10
    assert not silent, silent[:3]
