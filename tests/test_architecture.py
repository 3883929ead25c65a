"""Rules of the layout that a reader relies on: no import cycle among the server's
modules, data flows one way (a backend knows nothing of gRPC, policies or tenants), and
the limit names live in one list that every other spelling is pinned to."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from sandbox.core.limits import LIMIT_FIELDS, EffectiveLimits
from sandbox.policy.model import Policy, ServerMaximums
from sandbox_client.protocol.v1 import sandbox_pb2

SERVER = Path(__file__).resolve().parents[1] / "sandbox"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SERVER.rglob("*.py"):
        name = ".".join(path.relative_to(SERVER.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imports() -> dict[str, set[str]]:
    """Module -> the server modules it imports (by module, not by package)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            graph[module] |= {n for n in names if n in modules and n != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_server_modules() -> None:
    assert _cycles(_imports()) == []


def test_backends_know_nothing_of_grpc_policies_tenants_or_the_journal() -> None:
    forbidden = ("sandbox.edge", "sandbox.policy", "sandbox.access", "sandbox.durable")
    for module, imported in _imports().items():
        if module.startswith("sandbox.backends"):
            assert not [i for i in imported if i.startswith(forbidden)], module


def test_the_core_knows_nothing_of_grpc() -> None:
    paths = _modules()
    for module, imported in _imports().items():
        if module.startswith(("sandbox.core", "sandbox.durable", "sandbox.backends")):
            assert not [i for i in imported if i.startswith("sandbox.edge")], module
            assert "sandbox_pb2" not in paths[module].read_text(), module


def test_every_spelling_of_the_limits_is_the_one_list() -> None:
    assert tuple(f.name for f in dataclasses.fields(EffectiveLimits)) == LIMIT_FIELDS
    assert tuple(f.name for f in sandbox_pb2.Limits.DESCRIPTOR.fields) == LIMIT_FIELDS
    assert set(LIMIT_FIELDS) <= set(Policy.model_fields)
    assert set(LIMIT_FIELDS) <= set(ServerMaximums.model_fields)
