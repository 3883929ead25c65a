"""10,000 mixed items through one batch against a `sandbox serve` process: exactly one
result per item, each classified as the same item run alone by Execute is, and the
server's RSS after the batch within 10% of before it."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bench._server import sandbox_server
from sandbox_client import FailureKind, Limits, SandboxClient

COUNT = 10_000
MiB = 1024 * 1024

# (weight, item): ok, the code's own errors, limits hit, and items the server refuses.
KINDS: list[tuple[int, dict[str, Any]]] = [
    (60, {"code": "n + 1"}),
    (8, {"code": "1 / 0"}),
    (6, {"code": "def f(:\n    pass"}),
    (6, {"code": "print('x' * 50)\nn"}),
    (2, {"code": "while True:\n    pass", "limits": Limits(wall_time_ms=100)}),
    (5, {"code": "s = 'a' * (64 * 1024 * 1024)\nlen(s)", "limits": Limits(memory_bytes=16 * MiB)}),
    (5, {"code": ""}),
    (4, {"code": "n", "policy": "no-such-policy"}),
    (4, {"code": "n", "limits": Limits(memory_bytes=1 << 50)}),
]


def signature(result: Any) -> tuple[str, object, str]:
    kind = result.failure.kind.value if result.failure else "OK"
    return kind, result.result, result.stdout


@pytest.mark.load
def test_ten_thousand_mixed_items_each_classified_as_alone() -> None:
    rng = random.Random(16)
    templates = [item for _, item in KINDS]
    weights = [weight for weight, _ in KINDS]
    chosen = rng.choices(range(len(templates)), weights=weights, k=COUNT)
    items = [{**templates[t], "inputs": {"n": i}, "backend": "monty"} for i, t in enumerate(chosen)]
    with (
        sandbox_server("monty.min_workers=2", "monty.max_workers=2", "batch.window=16") as server,
        SandboxClient(server.address, timeout_s=120) as client,
    ):
        # Each kind alone, through unary Execute: what every batch item must match.
        alone = {}
        for t, template in enumerate(templates):
            alone[t] = client.execute(**{**template, "inputs": {"n": 7}, "backend": "monty"})
        assert {signature(r)[0] for r in alone.values()} >= {
            "OK",
            "RUNTIME_ERROR",
            "SYNTAX_ERROR",
            "TIMEOUT",
            "MEMORY_LIMIT",
            "INVALID_REQUEST",
            "POLICY_VIOLATION",
        }
        list(client.map(items[:1000]))  # warm-up, so RSS "before" is the steady state
        before = server.rss_bytes()
        results = list(client.map(items, timeout_s=600))
        after = server.rss_bytes()
    assert len(results) == COUNT
    counts: dict[str, int] = {}
    for i, (t, result) in enumerate(zip(chosen, results, strict=True)):
        expected = alone[t]
        kind, value, stdout = signature(result)
        counts[kind] = counts.get(kind, 0) + 1
        assert kind == signature(expected)[0], (i, templates[t], result.failure)
        if kind == "OK":
            assert value == (i + 1 if templates[t]["code"] == "n + 1" else i)
            assert stdout == expected.stdout
        if result.failure is not None and expected.failure is not None:
            assert result.failure.details.get("field") == expected.failure.details.get("field")
    assert counts[FailureKind.TIMEOUT.value] > 100 and counts["MEMORY_LIMIT"] > 300
    print(f"server RSS before {before / MiB:.1f} MiB, after {after / MiB:.1f} MiB")
    assert abs(after / before - 1) <= 0.10, (before, after)
