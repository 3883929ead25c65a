"""A kit for testing code that uses sandbox_client, as temporalio's `testing` package is
for code that uses temporalio:

- `fast_recovery(**overrides)`: a RecoveryPolicy with the default budgets and no backoff
  sleeps between retries.
- `serve_in_process(**settings)`: a real server (real Monty workers) on a loopback port
  of its own, in this process, for the length of a `with` block; yields its address.
- `sandbox_server`: a pytest fixture on serve_in_process, one server for the test
  session. Import it into your conftest.py: `from sandbox_client.testing import
  sandbox_server`.
- `InProcessServer`: what serve_in_process runs, for tests that reach into the server.

The kit needs pytest (the `testing` extra: `sandbox-client[testing]`). The server parts
also need this project's `sandbox` server distribution, at the version matching
sandbox-client, installed beside it; it is imported only when a server starts."""

from __future__ import annotations

import asyncio
import gc
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Self

import pytest

from .recovery._models import RecoveryPolicy

if TYPE_CHECKING:
    from sandbox.app import SandboxServer
    from sandbox.config import Settings

__all__ = ["InProcessServer", "fast_recovery", "sandbox_server", "serve_in_process"]


def fast_recovery(**overrides: Any) -> RecoveryPolicy:
    """A RecoveryPolicy that does not sleep between retries (RETRY's backoff is zero), with
    the default budgets, actions and bounds; `overrides` are RecoveryPolicy's fields. A
    server's retry_after_ms (THROTTLED's WAIT) is still waited for: that is the
    server's word, not the policy's."""
    values: dict[str, Any] = {"wait_initial_s": 0.0, "wait_max_s": 0.0, "wait_jitter_s": 0.0}
    return RecoveryPolicy(**{**values, **overrides})


class InProcessServer:
    """A SandboxServer running on its own event loop in a daemon thread, so blocking
    clients and asyncio tests can both talk to it. `address` is set once entered;
    `server` is the SandboxServer; `call(coro)` runs a coroutine on its loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        server_class, _ = _server_modules()
        self.server: SandboxServer = server_class(settings)
        self.loop = loop_factory()
        self.address = ""
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        try:
            port = self.call(self.server.start())
        except BaseException:
            self._stop_loop()  # `with` calls no __exit__ when __enter__ raises
            raise
        self.address = f"127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.server.stop(grace_s=1))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
        # Monty's worker pools are finalized now, while the runtime is whole, not at
        # interpreter shutdown (where finalizing them can abort the process).
        gc.collect()

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextmanager
def serve_in_process(**settings: Any) -> Iterator[str]:
    """Serves on 127.0.0.1, on a free port, until the block ends; yields the address for
    SandboxClient. `settings` are the server's settings sections, each a mapping that
    adds to these defaults (or a section object that replaces them):
    `serve_in_process(monty={"max_workers": 2})`. `server.port` defaults to 0 (a free
    one) and `journal.state_dir` (the journal, the checkpoint key) to a temporary
    directory removed afterwards, never the user's own."""
    _, settings_class = _server_modules()
    with tempfile.TemporaryDirectory(prefix="sandbox-state-") as state_dir:
        values: dict[str, Any] = {"server": {"port": 0}, "journal": {"state_dir": state_dir}}
        for name, section in settings.items():
            default = values.get(name)
            if isinstance(default, dict) and isinstance(section, dict):
                section = {**default, **section}
            values[name] = section
        with InProcessServer(settings_class(**values)) as running:
            yield running.address


def _server_modules() -> tuple[type[SandboxServer], type[Settings]]:
    try:
        from sandbox.app import SandboxServer
        from sandbox.config import Settings
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "sandbox":
            raise  # the server is installed, but something it needs is not
        raise RuntimeError(
            "sandbox_client.testing's in-process server needs the `sandbox` server "
            "distribution: install this project's server (at the version matching "
            "sandbox-client) beside sandbox-client"
        ) from exc
    return SandboxServer, Settings


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[str]:
    """The address of a real server shared by the test session (serve_in_process with
    its defaults). Pair it with a fresh SandboxClient per test."""
    with serve_in_process() as address:
        yield address
