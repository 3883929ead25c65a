"""State across an agent's steps for runs that cannot keep it in a session.

The service's tool runs (the Run RPC, where an agent's tools are called in the agent's
process) do not take a session, so a step's state is carried by the client instead:
after each step that succeeds, the JSON values of the names it assigned at top level
come back with its result and are bound as `inputs` of the next step, and its top-level
`def`, `class` and `import` statements are run again before the next step's code. What
is neither (an open file, a generator, a value assigned in a step that then failed)
does not survive the step. Pure: no I/O here."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# Our names in the program; the agent's code is not expected to use this prefix.
_PREFIX = "__sbx_"
_OUT = _PREFIX + "out"
_STATE = _PREFIX + "state"
_KEEP_DEFINITIONS = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Import,
    ast.ImportFrom,
)
_JSON_TYPES = "(int, float, str, bool, list, dict, tuple)"
_NEW_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


@dataclass
class Steps:
    """The carried state: JSON `values` by name, and the `definitions` to re-run."""

    values: dict[str, Any] = field(default_factory=dict)
    definitions: list[str] = field(default_factory=list)

    def prelude_lines(self) -> int:
        """How many lines run before the step's own code: its line N is line N + this
        in the program."""
        return sum(d.count("\n") + 1 for d in self.definitions)

    def program(self, code: str) -> str:
        """What runs for one step: the definitions so far, then `code` (verbatim, so its
        lines keep their numbers past the prelude), then an expression whose value is
        `[the code's last expression, {name: value}]`. Code that does not parse is sent
        as it is, for the service to report."""
        try:
            tree = ast.parse(code)
        except SyntaxError:
            return code
        step = code.rstrip() + "\n"
        out = "None"
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body[-1].value
            lines = code.splitlines(keepends=True)
            start = sum(len(line) for line in lines[: last.lineno - 1]) + _column(
                lines[last.lineno - 1], last.col_offset
            )
            step = code[:start] + f"{_OUT} = (" + code[start:].rstrip() + "\n)\n"
            out = ""
        parts = [*self.definitions, step.rstrip("\n")]
        if out:
            parts.append(f"{_OUT} = {out}")
        parts.append(f"{_STATE} = {{}}")
        for name in sorted(assigned_names(tree)):
            # A name a branch did not assign is not carried; nor is a function or module.
            parts.append(
                f"try:\n"
                f"    if {name} is None or isinstance({name}, {_JSON_TYPES}):\n"
                f"        {_STATE}[{name!r}] = {name}\n"
                f"except NameError:\n"
                f"    pass"
            )
        parts.append(f"[{_OUT}, {_STATE}]")
        return "\n".join(parts)

    def absorb(self, code: str, value: Any) -> Any:
        """Takes in what a successful step left (the value of its program) and returns
        the step's own output, the code's last expression."""
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], dict)):
            return value  # not a program of ours (code that did not parse never succeeds)
        output, state = value
        self.values.update(state)
        self.definitions.extend(
            ast.unparse(stmt)
            for stmt in ast.parse(code).body
            if isinstance(stmt, _KEEP_DEFINITIONS)
        )
        return output

    def in_step_terms(self, message: str, line: int | None) -> str:
        """A failure's message about the program, said of the step's own code: its line
        number less the prelude, and the program's own text taken out of the quoted
        source line."""
        offset = self.prelude_lines()
        if offset and line is not None and line > offset:
            message = message.replace(f"(line {line}", f"(line {line - offset}")
        return message.replace(f"{_OUT} = (", "")

    def bind(self, variables: Mapping[str, Any]) -> None:
        """Values the agent hands over (smolagents' `send_variables`); each must be JSON."""
        for name, value in variables.items():
            json.dumps(value, allow_nan=False)  # TypeError/ValueError: not carried, said now
            self.values[name] = value


def assigned_names(tree: ast.Module) -> set[str]:
    """Names the module's top level binds by assignment (not in nested scopes)."""
    return {
        node.id
        for node in _top_level(tree)
        if isinstance(node, ast.Name)
        and isinstance(node.ctx, ast.Store)
        and not node.id.startswith(_PREFIX)
    }


def _top_level(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        yield child
        if not isinstance(child, (*_NEW_SCOPES, ast.comprehension)):
            yield from _top_level(child)


def _column(line: str, byte_offset: int) -> int:
    """ast's col_offset counts UTF-8 bytes; the character index it points at."""
    return len(line.encode()[:byte_offset].decode(errors="ignore"))
