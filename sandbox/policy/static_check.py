"""A policy's static rules, checked on the source before any backend sees it.

The sandbox is the security boundary; these rules make a policy's intent explicit and
turn a recognisable attempt (a forbidden import, reaching for an interpreter internal)
into POLICY_VIOLATION with its line, instead of an arbitrary runtime error. Code the host
cannot parse is left to the backend, which reports SYNTAX_ERROR itself.

Parsing is CPU-bound and, for some sources, slow out of proportion to their size (an
f-string of 85,000 placeholders took 41 s), and `ast.parse` holds the GIL: the server
never runs it on its event loop for more than a small source. `serve()` is the loop of
the checker processes that sandbox/policy/checker.py keeps (`python -m
sandbox.policy.static_check`); this module imports only the standard library so that one
starts in a few tens of milliseconds."""

from __future__ import annotations

import ast
import json
import os
import signal
import struct
import sys
import warnings
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import BinaryIO

from sandbox.backends.monty import divergence

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


# Not a rule: a construct Monty answers differently from CPython (backends/monty/
# divergence.py), found on the same parse; its target is the divergence's id.
DIVERGENCE = "divergence"


@dataclass(frozen=True)
class Violation:
    rule: str  # "import", "attribute" or "name"; or DIVERGENCE, which breaks no rule
    target: str  # the module, attribute or name
    line: int
    column: int  # 1-based

    def describe(self) -> str:
        what = {"import": "import of", "attribute": "access to attribute", "name": "use of"}
        return f"{what[self.rule]} {self.target!r} is forbidden by policy"


def find_violation(code: str, denied_imports: Collection[str]) -> Violation | None:
    """The first rule `code` breaks, or None (also None when the host cannot parse it)."""
    return first_violation(findings(code), denied_imports)


def first_violation(
    found: Iterable[Violation], denied_imports: Collection[str]
) -> Violation | None:
    """The first of `found` (in source order) that breaks the rules with `denied_imports`."""
    for finding in found:
        if finding.rule == DIVERGENCE:
            continue
        if finding.rule != "import" or _denied(finding.target, denied_imports):
            return finding
    return None


def divergences(found: Iterable[Violation]) -> tuple[Violation, ...]:
    """The Monty divergences among `found` (their targets are divergence ids)."""
    return tuple(finding for finding in found if finding.rule == DIVERGENCE)


def findings(code: str, *, fidelity: bool = True) -> tuple[Violation, ...]:
    """What any set of rules needs to know of `code`, in source order: the first escape
    route (an attribute or a name, forbidden whatever the policy) and, before it, the
    first import of each module; then, with `fidelity`, the first place of each Monty
    divergence the source shows. first_violation() on these is first_violation() on
    every finding, and their number is bounded by the distinct modules imported (and
    the table's size), not by the size of the source."""
    compact: list[Violation] = []
    imported: set[str] = set()
    found, diverging = _all_findings(code, fidelity=fidelity)
    for finding in found:
        if finding.rule != "import":
            compact.append(finding)
            break
        if finding.target not in imported:
            imported.add(finding.target)
            compact.append(finding)
    return (*compact, *diverging)


def _all_findings(code: str, *, fidelity: bool = False) -> tuple[list[Violation], list[Violation]]:
    """Every import and escape route in `code`, in source order; and, with `fidelity`,
    the first place of each divergence."""
    try:
        with warnings.catch_warnings():
            # Invalid escapes and the like are the backend's to report, not the host log's.
            warnings.simplefilter("ignore")
            tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return [], []
    facts = divergence.Facts(tree)
    found = [
        Violation(rule, target, getattr(node, "lineno", 0), getattr(node, "col_offset", -1) + 1)
        for node in facts.nodes
        for rule, target in _check(node)
    ]
    diverging = (
        [Violation(DIVERGENCE, hit.id, hit.line, hit.column) for hit in divergence.detect(facts)]
        if fidelity
        else []
    )
    return sorted(found, key=lambda v: (v.line, v.column)), diverging


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


# -- the checker process -------------------------------------------------------------------

# A request: the source's length in bytes, the budget in milliseconds and whether to
# look for Monty divergences (0 or 1), then the source (UTF-8, lone surrogates passed
# through). A reply: its length, then a JSON object:
# {"found": [[rule, target, line, column], ...]} or {"error": "memory"}, and "retire":
# true when the process is done (it exits, and the server starts another).
REQUEST_HEADER = struct.Struct("<QI?")
REPLY_HEADER = struct.Struct("<Q")
# Checker processes yield the CPU to the server and its sandboxes.
NICENESS = 10
# Address space a checker may use (a 4 MiB source can take 2.4 GB to parse; the time
# budget stops most long before), and the resident size past which it retires rather
# than keep what the allocator holds on to.
MEMORY_LIMIT_BYTES = 1024 * 1024 * 1024
RETIRE_RSS_BYTES = 256 * 1024 * 1024


class CheckFailed(Exception):
    """The checker could not finish (it ran out of memory)."""


# The budget is CPU time: SIGPROF (its default action ends the process) after that much,
# so a check is not refused because the machine is busy. The server's wall-clock limit is
# this many times the budget, and the alarm a little more (an orphan stops on its own).
OVER_BUDGET_SIGNAL = signal.SIGPROF
WALL_FACTOR = 3


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answers check requests on `stdin` until it closes or the process retires. A check
    that uses more CPU time than its budget ends the process (OVER_BUDGET_SIGNAL); the
    server kills one that runs past WALL_FACTOR times the budget in wall time."""
    while True:
        header = stdin.read(REQUEST_HEADER.size)
        if len(header) < REQUEST_HEADER.size:
            return
        size, budget_ms, fidelity = REQUEST_HEADER.unpack(header)
        data = stdin.read(size)
        if len(data) < size:
            return
        signal.alarm(WALL_FACTOR * budget_ms // 1000 + 2)
        signal.setitimer(signal.ITIMER_PROF, budget_ms / 1000)
        reply: dict[str, object]
        try:
            found = findings(data.decode("utf-8", "surrogatepass"), fidelity=fidelity)
            reply = {"found": [[v.rule, v.target, v.line, v.column] for v in found]}
        except MemoryError:
            reply = {"error": "memory"}
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.alarm(0)
        del data
        reply["retire"] = "error" in reply or _resident_bytes() > RETIRE_RSS_BYTES
        body = json.dumps(reply).encode()
        stdout.write(REPLY_HEADER.pack(len(body)) + body)
        stdout.flush()
        if reply["retire"]:
            return


def decode_reply(body: bytes) -> tuple[tuple[Violation, ...], bool]:
    """A checker's reply: its findings, and whether the process retired. Raises
    CheckFailed when it could not check."""
    reply = json.loads(body)
    if "error" in reply:
        raise CheckFailed(str(reply["error"]))
    found = tuple(
        Violation(str(rule), str(target), int(line), int(column))
        for rule, target, line, column in reply["found"]
    )
    return found, bool(reply.get("retire"))


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _main() -> None:
    os.nice(NICENESS)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    except (ImportError, ValueError, OSError):
        pass  # not on this platform, or a lower limit already holds
    serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    _main()
