"""The README stays true: its taxonomy table is the client's, its examples run."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from google.protobuf import json_format

from sandbox_client.protocol.models import KIND_DEFAULTS, FailureKind
from sandbox_client.protocol.v1 import sandbox_pb2

from .conftest import REPO, ServerThread

README = (REPO / "README.md").read_text()


def test_taxonomy_table_matches_the_client() -> None:
    rows = re.findall(r"^\| ([A-Z_]+) \| .* \| (yes|no) \| ([A-Z]+) \|$", README, re.M)
    table = {FailureKind(kind): (retryable == "yes", action) for kind, retryable, action in rows}
    expected = {
        kind: (retryable, action.value) for kind, (retryable, action) in KIND_DEFAULTS.items()
    }
    assert table == expected


def test_python_examples_run(server: ServerThread) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    for block in blocks:
        if block.startswith("# sketch"):
            compile(block, "README.md", "exec")  # it plugs in code of the reader's own
            continue
        code = block.replace('"127.0.0.1:50051"', repr(server.address))
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr


def test_grpcurl_example_body_is_a_valid_request() -> None:
    body = re.search(r"grpcurl -plaintext -d '(\{.*?\})'", README)
    assert body is not None
    request = json_format.Parse(body.group(1), sandbox_pb2.ExecuteRequest())
    assert request.code == "sum(range(10))" and request.backend == sandbox_pb2.MONTY
    json.loads(body.group(1))


def test_shell_example_prints_what_the_readme_says(server: ServerThread) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sandbox", "run", "-", "--server", server.address, "--json"],
        input='print("hi"); 6 * 7\n',
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = json.loads(done.stdout)
    assert result["stdout"] == "hi\n" and result["result_json"] == "42"
