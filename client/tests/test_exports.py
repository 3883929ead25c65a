"""Pins the public surface: a name added to or dropped from sandbox_client, its recovery
vocabulary or its testing kit is a decision, written down in exports.txt beside this
file. And every exported class or function names the module it is exported from."""

from __future__ import annotations

import importlib
import inspect
import pickle
import traceback
import types
from pathlib import Path

import pytest
from pydantic import BaseModel

import sandbox_client
from sandbox_client import AsyncSandboxClient, SandboxClient

SNAPSHOT = Path(__file__).with_name("exports.txt")


def pinned() -> dict[str, list[str]]:
    """exports.txt as {module: names}."""
    sections: dict[str, list[str]] = {}
    for line in SNAPSHOT.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            names = sections[line[1:-1]] = []
        elif line and not line.startswith("#"):
            names.append(line)
    return sections


PUBLIC = sorted(pinned())


def test_every_public_module_exports_what_the_snapshot_says() -> None:
    exported = {name: list(importlib.import_module(name).__all__) for name in PUBLIC}
    assert exported == pinned()
    assert PUBLIC == [
        "sandbox_client",
        "sandbox_client.integrations.langchain",
        "sandbox_client.integrations.mcp",
        "sandbox_client.integrations.smolagents",
        "sandbox_client.recovery",
        "sandbox_client.testing",
        "sandbox_client.tools",
    ]


@pytest.mark.parametrize("module_name", PUBLIC)
def test_all_is_sorted_as_ruff_sorts_it(module_name: str) -> None:
    names = importlib.import_module(module_name).__all__

    def key(name: str) -> tuple[int, str]:  # CONSTANTS, then Classes, then functions
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert names == sorted(names, key=key)


@pytest.mark.parametrize("module_name", PUBLIC)
def test_exported_classes_and_functions_name_their_public_module(module_name: str) -> None:
    module = importlib.import_module(module_name)
    named = 0
    for name in module.__all__:
        obj = getattr(module, name)
        if isinstance(obj, type) or inspect.isfunction(obj):
            assert obj.__module__ == module_name, name
            named += 1
    assert named > 0


def test_the_root_namespace_holds_only_exported_names_and_subpackages() -> None:
    public = {n: v for n, v in vars(sandbox_client).items() if not n.startswith("_")}
    extra = {n for n, v in public.items() if n not in sandbox_client.__all__}
    assert all(isinstance(public[n], types.ModuleType) for n in extra), extra
    assert extra <= {"integrations", "protocol", "recovery", "testing", "tools"}


def test_a_traceback_names_the_public_module() -> None:
    failure = sandbox_client.Failure.of(sandbox_client.FailureKind.TIMEOUT, "too slow")
    try:
        raise sandbox_client.ExecutionFailed(sandbox_client.ExecutionResult.failed(failure))
    except sandbox_client.SandboxError as exc:
        text = "".join(traceback.format_exception(exc))
    assert "sandbox_client.ExecutionFailed: TIMEOUT: too slow" in text


def test_renamed_models_still_pickle_and_nest_in_a_model_of_your_own() -> None:
    # pickle finds a class by __module__, pydantic's schemas nest built models: both
    # must survive the rename.
    failure = sandbox_client.Failure.of(sandbox_client.FailureKind.TIMEOUT, "too slow")
    assert pickle.loads(pickle.dumps(failure)) == failure

    class Report(BaseModel):
        failure: sandbox_client.Failure
        policy: sandbox_client.RecoveryPolicy = sandbox_client.RecoveryPolicy()

    assert Report.model_validate_json(Report(failure=failure).model_dump_json()).failure == failure
    assert "RecoveryPolicy" in Report.model_json_schema()["$defs"]


def test_the_twins_have_the_same_methods_with_the_same_signatures() -> None:
    def public(cls: type) -> dict[str, list[tuple[str, object, object]]]:
        return {
            name: [
                (p.name, p.kind, p.default)
                for p in inspect.signature(getattr(cls, name)).parameters.values()
            ]
            for name in dir(cls)
            if not name.startswith("_")
        }

    sync, async_ = public(SandboxClient), public(AsyncSandboxClient)
    assert sync == async_
    assert {"execute", "execute_stream", "run", "run_tools", "create_session"} <= set(sync)
