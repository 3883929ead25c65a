"""Advice for a module the code lacks: the policies open to the caller whose image has
it. A catalog of images stands in for the container backend's labels here; the label on
the real data-science image is read in tests/backends/container/test_container_datascience.py."""

from __future__ import annotations

from sandbox.access.tenants import Access, Tenant, TenantRegistry
from sandbox.core.advice import with_module_advice
from sandbox.policy.model import Policy, PolicyRegistry
from sandbox_client import Backend, ExecutionResult, Failure, FailureKind

DS = "sandbox-runner-datascience:latest"


class Catalog:
    default_image = "sandbox-runner:latest"

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def provided_modules(self, image: str) -> frozenset[str]:
        self.asked.append(image)
        return frozenset({"numpy", "pandas"}) if image == DS else frozenset()


def missing(module: str, kind: FailureKind = FailureKind.RUNTIME_ERROR) -> ExecutionResult:
    failure = Failure.of(
        kind,
        f"ModuleNotFoundError: No module named '{module}' (line 1: import {module})",
        exception_type="ModuleNotFoundError",
    )
    return ExecutionResult.failed(failure)


POLICIES = PolicyRegistry(
    {
        "default": Policy(name="default"),
        "data-analysis": Policy(name="data-analysis", container_image=DS),
        "b-only": Policy(name="b-only", container_image=DS, tenants=frozenset({"b"})),
        "monty-only": Policy(
            name="monty-only", container_image=DS, backends=frozenset({Backend.MONTY})
        ),
    },
    "default",
)


async def advise(result: ExecutionResult, access: Access | None = None) -> ExecutionResult:
    return await with_module_advice(
        result,
        tenant="a",
        policy=POLICIES.get("default"),
        policies=POLICIES,
        access=access or Access(),
        catalog=Catalog(),
    )


async def test_a_missing_module_names_the_policy_whose_image_has_it() -> None:
    advised = (await advise(missing("numpy"))).failure
    assert advised is not None and advised.kind is FailureKind.RUNTIME_ERROR
    assert advised.message.endswith(
        f"; numpy is in the image {DS} of policy 'data-analysis': send policy='data-analysis'"
    )
    # Not b-only (closed to tenant a), not monty-only (no containers).
    assert advised.details["provided_by_policies"] == "data-analysis"
    assert advised.details["module"] == "numpy"


async def test_a_policy_the_tenant_may_not_use_is_never_offered() -> None:
    narrow = Access(TenantRegistry([Tenant(name="a", allowed_policies=frozenset({"default"}))]))
    assert (await advise(missing("numpy"), narrow)) == missing("numpy")


async def test_a_module_no_image_has_and_other_failures_stay_as_they_were() -> None:
    assert (await advise(missing("torch"))) == missing("torch")
    other = ExecutionResult.failed(Failure.of(FailureKind.RUNTIME_ERROR, "KeyError: 'numpy'"))
    assert (await advise(other)) == other
    assert (await advise(ExecutionResult(ok=True))) == ExecutionResult(ok=True)
