"""The 1,565 self-checking programs (HumanEval, MBPP) through the container backend: every
one must print its expected line. One fresh container each, from the warm pool."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import docker
import pytest

from sandbox_client import ExecutionResult
from tests.backends.container.conftest import assert_healthy, make_backend, run
from tests.corpus import read_jsonl, report

pytestmark = [pytest.mark.docker, pytest.mark.corpus]
CONCURRENCY = 2


@pytest.mark.timeout(1800)
async def test_correctness_corpus_in_containers(engine: docker.DockerClient) -> None:
    cases = read_jsonl("correctness/cases.jsonl")
    assert len(cases) == 1565
    backend = make_backend("runc", pool_size=4, max_concurrency=CONCURRENCY)
    await backend.start()
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(case: dict[str, Any]) -> ExecutionResult:
        async with limit:
            # The corpus promises 10 s on an idle CPython; two at once on two busy cores
            # with a one-core cap can take longer, and speed is not what this test checks.
            return await run(backend, case["code"], wall_time_ms=30_000)

    started = time.monotonic()
    try:
        results = await asyncio.gather(*(one(c) for c in cases))
        await assert_healthy(backend)
    finally:
        await backend.stop()
    elapsed = time.monotonic() - started

    failed = {
        case["id"]: (r.failure.message if r.failure else repr(r.stdout[:200]))
        for case, r in zip(cases, results, strict=True)
        if not (r.ok and r.stdout == case["expected_stdout"])
    }
    kinds = Counter(r.failure.kind.value for r in results if r.failure is not None)
    report(
        f"correctness (container, runc): {len(cases) - len(failed)}/{len(cases)} passed in "
        f"{elapsed:.0f} s at concurrency {CONCURRENCY} ({len(cases) / elapsed:.1f}/s); "
        f"failures by kind: {dict(kinds)}"
    )
    assert not failed, dict(list(failed.items())[:10])
