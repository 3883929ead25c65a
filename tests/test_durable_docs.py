"""docs/durable-runs.md stays true: its Python examples run against a real server."""

from __future__ import annotations

import re
import subprocess
import sys

from .conftest import REPO, ServerThread

DOC = (REPO / "docs" / "durable-runs.md").read_text()


def test_the_examples_run(server: ServerThread) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC, re.S)
    assert len(blocks) == 2
    for block in blocks:
        code = block.replace('"127.0.0.1:50051"', repr(server.address))
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
