"""Where a module the code could not import is to be had: the policies open to the
caller whose container image provides it. Advice only: the failure keeps its kind (the
code as written does not run under this policy), its message and details say which
policy would run it, instead of leaving "fix your code" as the only way on."""

from __future__ import annotations

import re
from typing import Protocol

from sandbox.access.tenants import Access
from sandbox.errors import PolicyDenied
from sandbox.policy.model import Policy, PolicyRegistry
from sandbox_client import Backend
from sandbox_client.protocol.models import ExecutionResult

_MISSING = re.compile(r"No module named '([A-Za-z_]\w*)")


class ModuleCatalog(Protocol):
    """What the container backend knows of its images."""

    @property
    def default_image(self) -> str:
        """The image a policy that names none runs in."""
        ...

    async def provided_modules(self, image: str) -> frozenset[str]:
        """The top-level modules `image` adds to the standard library (its label)."""
        ...


async def with_module_advice(
    result: ExecutionResult,
    *,
    tenant: str,
    policy: Policy,
    policies: PolicyRegistry,
    access: Access,
    catalog: ModuleCatalog,
) -> ExecutionResult:
    failure = result.failure
    if failure is None or failure.exception_type != "ModuleNotFoundError":
        return result
    found = _MISSING.search(failure.message)
    if found is None:
        return result
    module = found.group(1)
    offers: list[tuple[str, str]] = []
    for name in policies.names():
        other = policies.get(name)
        if name == policy.name or not _open_to(tenant, other, access):
            continue
        image = other.container_image or catalog.default_image
        if module in await catalog.provided_modules(image):
            offers.append((name, image))
    if not offers:
        return result
    (first, image), names = offers[0], ", ".join(name for name, _ in offers)
    advised = failure.model_copy(
        update={
            "message": f"{failure.message}; {module} is in the image {image} of policy "
            f"{first!r}: send policy={first!r}",
            "details": {**failure.details, "module": module, "provided_by_policies": names},
        }
    )
    return result.model_copy(update={"failure": advised})


def _open_to(tenant: str, policy: Policy, access: Access) -> bool:
    if Backend.CONTAINER not in policy.backends or not policy.allows_tenant(tenant):
        return False
    try:
        access.policy_for(tenant, policy.name)
    except PolicyDenied:
        return False
    return True
