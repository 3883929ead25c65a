"""The integrations are optional: `import sandbox_client` (and its integrations
package) loads none of the frameworks, so the core client keeps its own dependencies."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("mcp", "smolagents", "langchain_core", "starlette", "uvicorn")


def test_importing_the_client_loads_no_framework() -> None:
    check = (
        "import sys, sandbox_client, sandbox_client.integrations\n"
        f"loaded = [m for m in {FRAMEWORKS!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        # The probe is real: importing an integration does load its framework.
        "import sandbox_client.integrations.smolagents\n"
        "assert 'smolagents' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
