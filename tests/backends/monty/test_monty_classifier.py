"""map_monty_outcome case by case: what decides each kind, and what must not."""

from __future__ import annotations

import inspect

import pydantic_monty
import pytest

from sandbox.backends.monty.outcome import ERROR_CLASS_KINDS
from sandbox_client import FailureKind, SandboxClient


def test_every_monty_error_class_is_mapped() -> None:
    shipped = {
        obj
        for _, obj in inspect.getmembers(pydantic_monty, inspect.isclass)
        if issubclass(obj, pydantic_monty.MontyError) and obj is not pydantic_monty.MontyError
    }
    assert shipped, "pydantic_monty exports no MontyError subclasses?"
    assert shipped <= set(ERROR_CLASS_KINDS), f"unmapped: {shipped - set(ERROR_CLASS_KINDS)}"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        # Raised by the code itself: its own failure, whatever the exception's name.
        ("raise MemoryError('mine')", FailureKind.RUNTIME_ERROR),
        ("raise TimeoutError('mine')", FailureKind.RUNTIME_ERROR),
        ("def f():\n    raise NotImplementedError\nf()", FailureKind.RUNTIME_ERROR),
        ("raise ModuleNotFoundError('mine')", FailureKind.UNSUPPORTED),
        ("x = {}\nx.nope", FailureKind.RUNTIME_ERROR),
        ("import math\nmath.not_a_function()", FailureKind.RUNTIME_ERROR),
        ("undefined_name + 1", FailureKind.RUNTIME_ERROR),
        ("raise PermissionError('no')", FailureKind.RUNTIME_ERROR),
        # Monty lacks what CPython has: the code is fine, the backend is not enough.
        ("import os.path\nimport sys\nsys.exit(0)", FailureKind.POLICY_VIOLATION),
        ("import sys\nsys.exit(0)", FailureKind.UNSUPPORTED),
        ("import math\nmath.lcm(4, 6) if False else math.nonexistent", FailureKind.RUNTIME_ERROR),
        ("list.sort([3, 1])", FailureKind.UNSUPPORTED),
        ("exec('1')", FailureKind.POLICY_VIOLATION),
        ("class A(dict):\n    pass", FailureKind.UNSUPPORTED),
    ],
)
def test_classification(client: SandboxClient, code: str, kind: FailureKind) -> None:
    result = client.execute(code, backend="monty")
    assert result.failure is not None, code
    assert result.failure.kind is kind, result.failure.message
