"""The shared corpora through Execute on the Monty backend."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from sandbox_client import AsyncSandboxClient, ExecutionResult, FailureKind, Limits, SandboxClient
from tests.conftest import ServerThread
from tests.corpus import read_jsonl, report

pytestmark = pytest.mark.corpus
SECRET = "sandbox-test-secret-7f3a"


def test_smolagents_blocked_snippets_all_fail_in_monty(
    client: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A secret in the server's environment that no snippet may print.
    monkeypatch.setenv("SANDBOX_TEST_SECRET", SECRET)
    cases = read_jsonl("hostile/smolagents_security_cases.jsonl")
    distinct = {c["code"]: c for c in cases}
    blocked = {c["code"] for c in cases if c["expected"] == "blocked"}
    kinds: Counter[str] = Counter()
    for code in distinct:
        result = client.execute(code, backend="monty", limits=Limits(wall_time_ms=3000))
        assert SECRET not in result.stdout + result.stderr + (result.result_json or "")
        assert result.failure is None or result.failure.kind is not FailureKind.TIMEOUT, code
        if code in blocked:
            assert not result.ok, f"blocked snippet ran to completion: {code!r}"
            assert result.failure is not None
            kinds[result.failure.kind.value] += 1
    assert client.execute("print(1)").stdout == "1\n"
    report(
        f"smolagents: {len(distinct)} distinct snippets, {len(blocked)} marked blocked, all "
        f"{sum(kinds.values())} failed in Monty: {dict(sorted(kinds.items()))}"
    )


async def _run_all(address: str, cases: list[dict[str, Any]]) -> list[ExecutionResult]:
    limit = asyncio.Semaphore(4)
    async with AsyncSandboxClient(address, timeout_s=60) as client:

        async def one(case: dict[str, Any]) -> ExecutionResult:
            async with limit:
                return await client.execute(
                    case["code"], backend="monty", limits=Limits(wall_time_ms=5000)
                )

        return await asyncio.gather(*(one(c) for c in cases))


def test_correctness_corpus_in_monty(server: ServerThread) -> None:
    cases = read_jsonl("correctness/cases.jsonl")
    results = asyncio.run(_run_all(server.address, cases))
    passed = 0
    kinds: Counter[str] = Counter()
    exceptions: Counter[str] = Counter()
    for case, result in zip(cases, results, strict=True):
        if result.ok and result.stdout == case["expected_stdout"]:
            passed += 1
            continue
        failure = result.failure
        # Every non-pass is classified: no unclassified crash, no silent wrong answer
        # without a kind.
        assert failure is not None, f"{case['id']} ran but printed {result.stdout!r}"
        assert failure.kind is not FailureKind.SANDBOX_CRASH, case["id"]
        kinds[failure.kind.value] += 1
        exceptions[failure.exception_type or failure.kind.value] += 1
    rate = passed / len(cases)
    report(
        f"correctness (Monty): {passed}/{len(cases)} passed ({rate:.1%}); the rest by kind: "
        f"{dict(kinds.most_common())}; by exception: {dict(exceptions.most_common(8))}"
    )
    assert rate >= 0.90
