"""AUTO through a real server with both backends: Monty first, a container for what
Monty cannot run, and the result says which."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from sandbox_client import AsyncSandboxClient, Backend, ExecutionResult, SandboxClient
from tests.conftest import ServerThread
from tests.corpus import read_jsonl, report

pytestmark = pytest.mark.docker


def test_auto_runs_plain_code_in_monty(both_backends: ServerThread) -> None:
    with SandboxClient(both_backends.address) as client:
        result = client.execute("sum(range(10))")
    assert result.ok and result.result == 45
    assert result.backend is Backend.MONTY and result.fallback_from is None


def test_auto_falls_back_for_a_module_monty_lacks(both_backends: ServerThread) -> None:
    code = (
        "import zipfile, io\nbuf = io.BytesIO()\n"
        "zipfile.ZipFile(buf, 'w').close()\nlen(buf.getvalue())"
    )
    with SandboxClient(both_backends.address) as client:
        result = client.execute(code)
    assert result.ok, result.failure
    assert result.result == 22
    assert result.backend is Backend.CONTAINER and result.fallback_from is Backend.MONTY


def test_auto_runs_monty_denied_imports_in_a_container(both_backends: ServerThread) -> None:
    with SandboxClient(both_backends.address) as client:
        result = client.execute("import os\nos.path.join('a', 'b')")
    assert result.ok, result.failure
    assert result.result == "a/b"
    assert result.fallback_from is Backend.MONTY


def test_explicit_container_backend_through_the_server(both_backends: ServerThread) -> None:
    with SandboxClient(both_backends.address) as client:
        result = client.execute("import sys\nprint(sys.version_info[0])", backend="container")
        assert result.ok and result.stdout == "3\n" and result.backend is Backend.CONTAINER
        assert client.execute("print(1)").ok


async def _run_all(address: str, cases: list[dict[str, Any]]) -> list[ExecutionResult]:
    limit = asyncio.Semaphore(4)
    async with AsyncSandboxClient(address, timeout_s=120) as client:

        async def one(case: dict[str, Any]) -> ExecutionResult:
            async with limit:
                return await client.execute(case["code"])

        return await asyncio.gather(*(one(c) for c in cases))


@pytest.mark.corpus
@pytest.mark.timeout(1800)
def test_correctness_corpus_with_auto(both_backends: ServerThread) -> None:
    cases = read_jsonl("correctness/cases.jsonl")
    results = asyncio.run(_run_all(both_backends.address, cases))
    where: Counter[str] = Counter()
    failed_in_monty: Counter[str] = Counter()
    fallback_failures = []
    for case, result in zip(cases, results, strict=True):
        passed = result.ok and result.stdout == case["expected_stdout"]
        if result.fallback_from is Backend.MONTY:
            where["fell back"] += 1
            if not passed:
                fallback_failures.append((case["id"], result.failure))
        else:
            where["Monty"] += 1
            if not passed:
                assert result.failure is not None, case["id"]
                failed_in_monty[result.failure.kind.value] += 1
    report(
        f"correctness (AUTO): {where['Monty']} ran in Monty "
        f"({where['Monty'] - sum(failed_in_monty.values())} passed; failed there: "
        f"{dict(failed_in_monty)}), {where['fell back']} fell back to a container "
        f"({where['fell back'] - len(fallback_failures)} passed)"
    )
    assert not fallback_failures, fallback_failures[:5]
    assert where["fell back"] > 0
