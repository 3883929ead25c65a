"""The table of Monty's known divergences from CPython (backends/monty/divergence.py):
every entry's example still diverges in the installed pydantic-monty (a release that
fixes or changes one fails here, naming it), the detector finds what the table says it
finds, and Monty's outcome reads a divergence's error as the table says. CPython is
this test process's own interpreter, running the example in a subprocess; the container
backend runs the same examples in tests/backends/container/test_divergence_container.py."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib.metadata import version

import pytest
import pytest_asyncio

from sandbox.backends.base import RunSpec
from sandbox.backends.monty import divergence
from sandbox.backends.monty.backend import MontyBackend
from sandbox.backends.monty.divergence import TABLE, detect_source
from sandbox.backends.monty.settings import MontySettings
from sandbox_client import ExecutionResult, FailureKind
from tests.conftest import failure_of, limits

# How much slower than CPython Monty must be on the "slower" example to keep it in the
# table (measured: 2.3 to 4 times, with the machine idle or busy).
SLOWER_AT_LEAST = 1.5


def cpython(code: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s
    )


def cpython_seconds(code: str) -> float:
    """How long `code` takes in CPython, the interpreter's start left out."""
    timed = (
        f"import time\n_t = time.perf_counter()\nexec({code!r})\nprint(time.perf_counter() - _t)"
    )
    return float(cpython(timed).stdout.strip().splitlines()[-1])


@pytest_asyncio.fixture(scope="module")
async def monty() -> AsyncIterator[MontyBackend]:
    backend = MontyBackend(MontySettings(min_workers=1, max_workers=2, warm_sessions=0))
    await backend.start()
    yield backend
    await backend.stop()


async def run_in_monty(
    backend: MontyBackend, code: str, *, fallback_follows: bool = False, wall_time_ms: int = 10_000
) -> ExecutionResult:
    spec = RunSpec(
        code=code, limits=limits(wall_time_ms=wall_time_ms), fallback_follows=fallback_follows
    )
    return await backend.run(spec)


def test_the_table_was_checked_against_the_installed_monty() -> None:
    # A new pydantic-monty: rerun this module and update monty_version of each entry.
    assert version("pydantic-monty") == divergence.CHECKED_MONTY_VERSION
    assert {entry.monty_version for entry in TABLE} == {divergence.CHECKED_MONTY_VERSION}


def test_every_entry_is_complete_and_its_id_unique() -> None:
    assert len(divergence.BY_ID) == len(TABLE)
    for entry in TABLE:
        for name, value in dataclasses.asdict(entry).items():
            assert value, (entry.id, name)


@pytest.mark.parametrize("entry", TABLE, ids=lambda e: e.id)
async def test_each_example_still_diverges_from_cpython(
    monty: MontyBackend, entry: divergence.Divergence
) -> None:
    expected = cpython(entry.example)
    assert expected.returncode == 0, expected.stderr
    result = await run_in_monty(monty, entry.example)
    if entry.kind == "slower":
        assert result.ok and result.stdout == expected.stdout, result.failure
        native_s = cpython_seconds(entry.example)
        assert result.usage.wall_ms / 1000 > SLOWER_AT_LEAST * native_s, (
            f"{entry.id}: Monty took {result.usage.wall_ms} ms, CPython {native_s:.3f} s"
        )
        return
    assert not (result.ok and result.stdout == expected.stdout), (
        f"{entry.id}: pydantic-monty {version('pydantic-monty')} now answers as CPython does "
        "(remove the entry, or give it an example that still diverges)"
    )
    if entry.kind == "silent":
        assert result.ok, result.failure  # a wrong answer, not an error
    else:
        # The code's own error as far as Monty alone can tell, or (a gap Monty's own
        # error names) UNSUPPORTED.
        assert result.failure is not None
        assert result.failure.kind in (FailureKind.RUNTIME_ERROR, FailureKind.UNSUPPORTED)


@pytest.mark.parametrize("entry", [e for e in TABLE if "static" in e.detection], ids=str)
def test_statically_detectable_examples_are_detected(entry: divergence.Divergence) -> None:
    assert entry.id in {hit.id for hit in detect_source(entry.example)}


@pytest.mark.parametrize("entry", [e for e in TABLE if "static" not in e.detection], ids=str)
def test_the_other_examples_are_not_claimed_by_the_detector(entry: divergence.Divergence) -> None:
    assert entry.id not in {hit.id for hit in detect_source(entry.example)}


# Examples of each error-detected divergence that the static rules do not see (the
# value's type is only known at run time), so the error is what tells.
_HIDDEN = {
    "eager-iterator": "pair = zip\nprint(next(pair([1], [2])))",
    "list-iadd-iterable": (
        "def grow(xs, more):\n    xs += more\n    return xs\nprint(grow([1], (2,)))"
    ),
    "missing-method": divergence.BY_ID["missing-method"].example,
}


@pytest.mark.parametrize("entry_id", sorted(_HIDDEN))
async def test_a_divergence_error_is_unsupported_when_a_container_follows(
    monty: MontyBackend, entry_id: str
) -> None:
    code = _HIDDEN[entry_id]
    assert entry_id not in {hit.id for hit in detect_source(code)}
    assert cpython(code).returncode == 0
    moved = failure_of(
        await run_in_monty(monty, code, fallback_follows=True), FailureKind.UNSUPPORTED
    )
    if entry_id != "missing-method":  # Monty's gap, named as before ("missing": ...)
        assert moved.details["divergence"] == entry_id


@pytest.mark.parametrize("entry_id", ["eager-iterator", "list-iadd-iterable"])
async def test_without_a_container_it_is_the_codes_error_with_the_doubt_named(
    monty: MontyBackend, entry_id: str
) -> None:
    result = await run_in_monty(monty, _HIDDEN[entry_id])
    failure = failure_of(result, FailureKind.RUNTIME_ERROR)
    assert failure.details["divergence"] == entry_id
    assert f"[{entry_id}]" in result.fidelity_warning


async def test_the_same_error_from_code_wrong_in_cpython_too_is_still_the_codes(
    monty: MontyBackend,
) -> None:
    # `xs + (2,)` fails in CPython as well: not the `+=` divergence.
    result = await run_in_monty(monty, "xs = [1]\nys = xs + (2,)", fallback_follows=True)
    assert "divergence" not in failure_of(result, FailureKind.RUNTIME_ERROR).details
    assert result.fidelity_warning == ""


async def test_a_time_limit_is_unsupported_only_when_a_container_follows(
    monty: MontyBackend,
) -> None:
    code = "while True:\n    pass"
    alone = await run_in_monty(monty, code, wall_time_ms=300)
    failure_of(alone, FailureKind.TIMEOUT)
    moved = await run_in_monty(monty, code, wall_time_ms=300, fallback_follows=True)
    assert failure_of(moved, FailureKind.UNSUPPORTED).details["divergence"] == "slower"


# -- the detector on its own ----------------------------------------------------------

FLAGGED = {
    "s = set([1, 2]); t = s | {3}\nfor x in t:\n    print(x)": "set-order",
    "def f(a):\n    return set(a)\nprint(list(f([1, 2])))": "set-order",
    "def g(s):\n    for x in s:\n        print(x)\ng({1, 2})": "set-order",
    "d = {1: 2}\nprint(list(d.keys() & {1}))": "set-order",
    "s = set()\ns.add(1)\nprint(s.pop())": "set-order",
    "print([x * 2 for x in {3, 1}])": "set-order",
    "print(str(frozenset({3, 1})))": "set-order",
    "print({3, 1, 2})": "set-order",
    "for x in map(print, [1, 2]):\n    pass": "eager-iterator",
    "print(any(1 / x > 1 for x in [1, 0]))": "eager-iterator",
    "z = zip([1], [2])\nprint(list(z), list(z))": "eager-iterator",
    "print(zip([1], [2]))": "eager-iterator",
    "g = (print(x) for x in [1, 2])\nprint('after')": "eager-iterator",
    "xs = [1]\nxs += 'ab'": "list-iadd-iterable",
    "xs = []\nxs += range(3)": "list-iadd-iterable",
    "import re\nprint(re.sub('(a)', r'\\1x', 'a'))": "re-group-reference",
}
CLEAN = [
    "1 + 1",
    "s = {1, 2}\nprint(len(s), 1 in s, sorted(s), s == {2, 1})",
    "print(sum(x for x in [1, 2]))",
    "for i, x in enumerate([1, 2]):\n    print(i, x)",
    "for x in map(int, '12'):\n    print(x)",
    "print(any(x > 1 for x in [1, 2]))",
    "z = zip([1], [2])\nprint(list(z))",
    "print(','.join(str(x) for x in [1, 2]))",
    "print(sorted(list(set([3, 1]))), len(tuple({1})))",
    "print(sorted([x * 2 for x in {3, 1}]))",
    "print({x * 2 for x in {3, 1}} == {2, 6})",
    "xs = [1]\nxs += [2]",
    "import re\nprint(re.sub('(a)', r'<\\1>', 'a'), re.sub('(a)', r'\\g<1>_', 'a'))",
    "x = {1, 2}\nx",  # the last value is converted on the host, in CPython's order
    "def f(x)\n",  # does not parse: nothing to say
]


@pytest.mark.parametrize(("code", "expected"), FLAGGED.items())
def test_the_detector_flags(code: str, expected: str) -> None:
    assert [hit.id for hit in detect_source(code)] == [expected]


@pytest.mark.parametrize("code", CLEAN)
def test_the_detector_leaves_alone(code: str) -> None:
    assert detect_source(code) == ()
