"""A seeded generator of programs whose answer depends on set iteration order or on
generator expressions (and zip/map/filter/enumerate) being lazy: held out from the
divergence detector's own tests, to check that no such program gets a silent wrong
answer through AUTO. Sets hold ints only: CPython's order for them is the same in every
process (strings are hashed with a per-process seed), so the test's own interpreter is
an oracle for the container."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

Maker = Callable[[random.Random], str]


def _ints(rng: random.Random) -> str:
    values = [rng.choice([rng.randint(-5, 40), rng.randint(100, 300), 8 * rng.randint(1, 9)])]
    values += [rng.randint(-5, 300) for _ in range(rng.randint(2, 9))]
    return ", ".join(map(str, values))


def _a_set(rng: random.Random) -> str:
    """An expression whose value is a set (or frozenset) of ints."""
    a, b = _ints(rng), _ints(rng)
    return rng.choice(
        [
            f"set(({a},))",
            f"{{{a}}}",
            f"frozenset([{a}])",
            f"{{x * {rng.randint(2, 9)} for x in ({a},)}}",
            f"set([{a}]) & set([{b}, {a.split(', ')[0]}])",
            f"set([{a}]) | set([{b}])",
            f"set([{a}]) ^ set([{b}])",
            f"set([{a}]) - set([{b}])",
            f"set([{a}]).union([{b}])",
            f"dict.fromkeys([{a}]).keys() | {{{b}}}",
        ]
    )


def _set_program(rng: random.Random) -> str:
    source = _a_set(rng)
    use = rng.choice(
        [
            "print(S)",
            "print(list(S))",
            "print(tuple(S))",
            "for x in S:\n    print(x)",
            "print([x + 1 for x in S])",
            "print(','.join(str(x) for x in S))",
            "print(next(iter(S)))",
            "print(list(enumerate(S)))",
            "print(list(zip(S, range(3))))",
            "print(S.pop() if isinstance(S, set) else min(S))",
            "out = []\nfor x in S:\n    out.append(x)\nprint(out[:2])",
            "print(f'{S}')",
            "print(str(list(S)))",
            "print(dict.fromkeys(S))",
            "first, *rest = S\nprint(first)",
            # order-free uses: the same in Monty (a detector that flags them only costs time)
            "print(sorted(S))",
            "print(len(S), min(S), max(S))",
            "print(3 in S, S == set(S))",
        ]
    )
    if rng.random() < 0.4:
        return f"def f(values):\n    S = values\n    {_indent(use)}\nf({source})\n"
    if rng.random() < 0.3:
        return f"def make():\n    return {source}\nS = make()\n{use}\n"
    return f"S = {source}\n{use}\n"


def _genexp_program(rng: random.Random) -> str:
    xs = f"[{_ints(rng)}]"
    k = rng.randint(2, 5)
    return rng.choice(
        [
            f"xs = {xs}\nprint(next((x for x in xs if x % {k} == 0), -1))",
            f"xs = {xs}\nprint(next(x for x in xs + [{k * 7}] if x % {k} == 0))",
            f"g = (x * 2 for x in {xs})\nprint(list(g))\nprint(list(g))",
            f"g = (x for x in {xs})\nprint(sum(g), sum(g))",
            f"g = (print(x) for x in {xs})\nprint('made')\nfor _ in g:\n    break",
            f"def noisy(x):\n    print('saw', x)\n    return x > {k * 10}\n"
            f"print(any(noisy(x) for x in {xs}))",
            f"def noisy(x):\n    print('saw', x)\n    return x < {k * 30}\n"
            f"print(all(noisy(x) for x in {xs}))",
            f"it = zip({xs}, 'abcdefghijkl')\nprint(next(it))",
            f"it = map(str, {xs})\nprint(next(it), next(it))",
            f"it = filter(lambda v: v > {k}, {xs})\nprint(next(it, None))",
            f"it = enumerate({xs})\nprint(next(it))",
            f"it = reversed({xs})\nprint(next(it))",
            f"z = zip({xs}, {xs})\nprint(len(list(z)), len(list(z)))",
            f"def show(v):\n    print('item', v)\n    return v\n"
            f"for y in map(show, {xs}):\n    print('got', y)",
            f"xs = {xs}\nprint(any(100 // x > 1 for x in xs + [0]))",
            # lazy objects used as eager ones would: the same in Monty
            f"print(sum(x for x in {xs} if x % {k}))",
            f"print(list(zip({xs}, range(4))))",
            f"print(max(x % {k} for x in {xs}))",
            f"for i, v in enumerate({xs}):\n    print(i, v)",
        ]
    )


def _indent(block: str) -> str:
    return block.replace("\n", "\n    ")


MAKERS: dict[str, Maker] = {"set-order": _set_program, "generator": _genexp_program}


def programs(seed: int, count: int) -> Iterator[tuple[str, str]]:
    """`count` (family, source) pairs, the same for the same seed."""
    rng = random.Random(seed)
    families = sorted(MAKERS)
    for _ in range(count):
        family = rng.choice(families)
        yield family, MAKERS[family](rng)


_ORACLE = r"""
import contextlib, io, json, sys
answers = []
for code in json.load(sys.stdin):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<program>", "exec"), {"__name__": "__main__"})
        ok = True
    except Exception:
        ok = False
    answers.append([ok, out.getvalue()])
json.dump(answers, sys.stdout)
"""


def cpython_answers(codes: list[str]) -> list[tuple[bool, str]]:
    """(completed, stdout) of each program under this process's own CPython, all in one
    subprocess (each in fresh globals)."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _ORACLE],
        input=json.dumps(codes),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [(bool(ok), str(out)) for ok, out in json.loads(done.stdout)]
