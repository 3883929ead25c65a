"""A policy's static rules, checked on the source before any backend sees it.

The sandbox is the security boundary; these rules make a policy's intent explicit and
turn a recognisable attempt (a forbidden import, reaching for an interpreter internal)
into POLICY_VIOLATION with its line, instead of an arbitrary runtime error. Code the host
cannot parse is left to the backend, which reports SYNTAX_ERROR itself."""

from __future__ import annotations

import ast
import functools
import warnings
from collections.abc import Collection
from dataclasses import dataclass

# Attributes that lead from an ordinary object to frames, globals, builtins or the class
# graph: the classic sandbox-escape routes.
ESCAPE_ATTRIBUTES = frozenset(
    {
        "__base__",
        "__bases__",
        "__builtins__",
        "__class__",
        "__closure__",
        "__code__",
        "__dict__",
        "__dir__",
        "__getattribute__",
        "__globals__",
        "__import__",
        "__loader__",
        "__mro__",
        "__reduce__",
        "__reduce_ex__",
        "__spec__",
        "__subclasses__",
        "__traceback__",
        "_getframe",
        "cr_frame",
        "f_back",
        "f_builtins",
        "f_globals",
        "f_locals",
        "gi_frame",
        "tb_frame",
    }
)
# Builtins that evaluate strings as code or expose namespaces.
ESCAPE_NAMES = frozenset(
    {
        "__builtins__",
        "__import__",
        "breakpoint",
        "compile",
        "eval",
        "exec",
        "globals",
        "locals",
        "vars",
    }
)


@dataclass(frozen=True)
class Violation:
    rule: str  # "import", "attribute" or "name"
    target: str  # the module, attribute or name
    line: int
    column: int  # 1-based

    def describe(self) -> str:
        what = {"import": "import of", "attribute": "access to attribute", "name": "use of"}
        return f"{what[self.rule]} {self.target!r} is forbidden by policy"


def find_violation(code: str, denied_imports: Collection[str]) -> Violation | None:
    """The first rule `code` breaks, or None (also None when the host cannot parse it)."""
    for finding in _findings(code):
        if finding.rule != "import" or _denied(finding.target, denied_imports):
            return finding
    return None


@functools.lru_cache(maxsize=512)
def _findings(code: str) -> tuple[Violation, ...]:
    """Every import and escape route in `code`, in source order. Cached: agents resend
    the same code, and AUTO checks one source against two backends' rules."""
    try:
        with warnings.catch_warnings():
            # Invalid escapes and the like are the backend's to report, not the host log's.
            warnings.simplefilter("ignore")
            tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ()
    found = [
        Violation(rule, target, getattr(node, "lineno", 0), getattr(node, "col_offset", -1) + 1)
        for node in ast.walk(tree)
        for rule, target in _check(node)
    ]
    return tuple(sorted(found, key=lambda v: (v.line, v.column)))


def _check(node: ast.AST) -> list[tuple[str, str]]:
    if isinstance(node, ast.Import):
        return [("import", alias.name) for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [("import", node.module)]
    if isinstance(node, ast.Attribute) and node.attr in ESCAPE_ATTRIBUTES:
        return [("attribute", node.attr)]
    if isinstance(node, ast.Name) and node.id in ESCAPE_NAMES:
        return [("name", node.id)]
    # getattr(x, "__class__") and friends spell the attribute as a string.
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [("attribute", node.value)] if node.value in ESCAPE_ATTRIBUTES else []
    return []


def _denied(module: str, denied: Collection[str]) -> bool:
    top = module.split(".")[0]
    return module in denied or top in denied
