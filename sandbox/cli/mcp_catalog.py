"""What `sandbox mcp` shows each caller as resources: the policies of the settings that
the caller's tenant may use (by core/plan.py's own rule, both lists), each explained with
its digest, that tenant's default marked, and the backends the settings enable."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sandbox.access.reload import load_policies, load_tenants
from sandbox.access.tenants import Access
from sandbox.config import Settings
from sandbox.core import plan
from sandbox.core.sessions import SessionRegistry
from sandbox.errors import RequestError
from sandbox.policy.review import explain
from sandbox_client import Backend
from sandbox_client.integrations.mcp import Catalog, PolicyInfo


def catalogs(settings: Settings, api_keys: Iterable[str | None]) -> Callable[[str | None], Catalog]:
    """A catalog for each of `api_keys` (None: no key), worked out once; a key not
    among them sees none (the service would refuse it anyway)."""
    registry, _ = load_policies(settings.policies)
    backends: tuple[Backend, ...] = (Backend.MONTY,)
    if settings.container.enabled:
        backends += (Backend.CONTAINER,)
    context = plan.Context(
        registry,
        Access(load_tenants(settings.tenants, registry)),
        SessionRegistry(settings.sessions),
        frozenset(backends),
    )
    by_key = {key: _catalog(context, key, backends) for key in set(api_keys)}
    nothing = Catalog(policies=(), backends=backends)
    return lambda key: by_key.get(key, nothing)


def _catalog(context: plan.Context, api_key: str | None, backends: tuple[Backend, ...]) -> Catalog:
    metadata = [("authorization", f"Bearer {api_key}")] if api_key else None
    try:
        tenant = context.access.authenticate(metadata, [])
        default = plan.policy_for(tenant, "", context).name
    except RequestError:
        return Catalog(policies=(), backends=backends)
    usable = []
    for name in context.policies.names():
        try:
            policy = plan.policy_for(tenant, name, context)
        except RequestError:
            continue
        usable.append(
            PolicyInfo(
                name=name,
                digest=policy.digest,
                explanation=explain(policy),
                default=name == default,
            )
        )
    return Catalog(policies=tuple(usable), backends=backends)
