"""AUTO's routing around Monty's known divergences (core/plan.py), on its own and
through a real server with Monty only (the container cases are in
tests/backends/container/test_divergence_container.py)."""

from __future__ import annotations

import pytest

from sandbox.core.plan import plan
from sandbox.core.request import Request
from sandbox.policy.model import Policy
from sandbox_client import Backend, FailureKind, SandboxClient
from tests.conftest import ServerThread, failure_of
from tests.core.test_plan import MONTY_ONLY, context

SET_ORDER = "print(tuple(set((3, 4, 5, 6)) & set((5, 7, 4, 10))))"
# Above the checker's inline limit (512 bytes): the check runs in a checker process.
LONG_SET_ORDER = "# " + "x" * 600 + "\n" + SET_ORDER


async def test_auto_sends_divergent_code_straight_to_the_container() -> None:
    decided = await plan(Request(code=SET_ORDER), context())
    assert decided.steps == (Backend.CONTAINER,)
    assert decided.fallback_from is Backend.MONTY
    assert decided.fallback_reason.startswith("Monty diverges from CPython: iterating a set")
    assert "(line 1)" in decided.fallback_reason
    assert decided.fidelity_warning == ""


async def test_code_with_no_divergence_stays_monty_first() -> None:
    decided = await plan(Request(code="print(sorted(set((3, 1))))"), context())
    assert decided.steps == (Backend.MONTY, Backend.CONTAINER)
    assert decided.fallback_from is None and decided.fallback_reason == ""


@pytest.mark.parametrize(
    ("request_", "available"),
    [
        (Request(code=SET_ORDER, backend=Backend.MONTY), None),
        (Request(code=SET_ORDER), MONTY_ONLY),
        (Request(code=SET_ORDER, policy="no-fallback"), None),
    ],
    ids=["monty-asked", "no-container", "no-fallback"],
)
async def test_with_nowhere_to_move_monty_runs_it_with_a_warning(
    request_: Request, available: frozenset[Backend] | None
) -> None:
    no_fallback = Policy(name="no-fallback", allow_fallback=False)
    ctx = context(no_fallback) if available is None else context(available=available)
    decided = await plan(request_, ctx)
    assert decided.steps == (Backend.MONTY,)
    assert decided.fallback_from is None
    assert decided.fidelity_warning.startswith("Monty may answer differently from CPython")
    assert "[set-order]" in decided.fidelity_warning


async def test_the_policy_can_turn_routing_off() -> None:
    off = Policy(name="off", fidelity_routing=False)
    decided = await plan(Request(code=SET_ORDER, policy="off"), context(off))
    assert decided.steps == (Backend.MONTY, Backend.CONTAINER)
    assert decided.fidelity_warning == "" and decided.fallback_reason == ""


async def test_a_monty_only_denial_says_why_it_moved() -> None:
    decided = await plan(Request(code="import os\nprint(1)"), context())
    assert decided.steps == (Backend.CONTAINER,)
    assert decided.fallback_reason.startswith("denied in Monty: import of 'os'")


async def test_a_refusal_still_wins_over_a_divergence() -> None:
    decided = await plan(Request(code="import ctypes\n" + SET_ORDER), context())
    assert decided.refusal is not None
    failure_of(decided.refusal, FailureKind.POLICY_VIOLATION)


def test_through_the_server_a_monty_result_carries_the_warning(server: ServerThread) -> None:
    with SandboxClient(server.address) as client:
        for code in (SET_ORDER, LONG_SET_ORDER):
            result = client.execute(code, backend="monty")
            assert result.ok and result.backend is Backend.MONTY
            assert result.stdout == "(5, 4)\n"  # Monty's order; CPython prints (4, 5)
            assert "[set-order]" in result.fidelity_warning
        plain = client.execute("print(sorted({3, 1}))", backend="monty")
        assert plain.ok and plain.fidelity_warning == ""


def test_through_the_server_a_divergence_error_names_its_doubt(server: ServerThread) -> None:
    with SandboxClient(server.address) as client:
        result = client.execute("pair = zip\nprint(next(pair([1], [2])))")
    # AUTO with no container on this server: Monty's answer, the doubt named.
    failure = failure_of(result, FailureKind.RUNTIME_ERROR)
    assert failure.details["divergence"] == "eager-iterator"
    assert "[eager-iterator]" in result.fidelity_warning
