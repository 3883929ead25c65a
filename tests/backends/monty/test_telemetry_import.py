"""pydantic-monty imports opentelemetry.context on every feed that calls back into
Python (a print, input(), an OS call). The server depends on opentelemetry-api
(pydantic-monty's `opentelemetry` extra) so that import is found once and then served
from sys.modules, instead of failing and searching sys.path twice per feed."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import pydantic_monty as pm


class _Lookups:
    """A meta-path finder that only counts the searches for opentelemetry modules."""

    def __init__(self) -> None:
        self.count = 0

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            self.count += 1
        return None


def test_opentelemetry_api_is_installed() -> None:
    assert importlib.util.find_spec("opentelemetry.context") is not None


async def test_feeds_with_callbacks_search_for_opentelemetry_at_most_once() -> None:
    lookups = _Lookups()
    printed: list[str] = []
    sys.meta_path.insert(0, lookups)
    try:
        async with pm.AsyncMonty(min_processes=1, max_processes=1) as pool:
            for i in range(20):
                async with pool.checkout() as session:
                    await session.feed_run(
                        f"print({i})", print_callback=lambda _stream, text: printed.append(text)
                    )
    finally:
        sys.meta_path.remove(lookups)
    assert "".join(printed).split() == [str(i) for i in range(20)]
    # Found in sys.modules after (at most) the first feed; without the package: 40.
    assert lookups.count <= 5
