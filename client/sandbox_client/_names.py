"""Where the public names say they live."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def publish(module: str, namespace: Mapping[str, object], names: Iterable[str]) -> None:
    """Makes each of `names` (a public module's `__all__`) that is defined below `module`
    name `module` as its home, as httpx does: tracebacks, reprs and pickles say
    sandbox_client.Failure, not sandbox_client.protocol.models.Failure."""
    for name in names:
        obj = namespace[name]
        if getattr(obj, "__module__", "").startswith(f"{module}."):
            obj.__module__ = module
