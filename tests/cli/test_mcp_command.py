"""`sandbox mcp`'s refusals, each before anything starts: a bad token file, a token map
on stdio, and an HTTP bind beyond loopback without tokens (secure by default, as
`sandbox serve` is). The running server is tested over both transports in
client/tests/integrations/test_integration_mcp.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SANDBOX = [sys.executable, "-m", "sandbox", "mcp"]


def refused(*args: str) -> str:
    done = subprocess.run(
        [*SANDBOX, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""  # stdout is the protocol's: nothing but MCP may go there
    return done.stderr


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("not json", "is not JSON"),
        ('["tok"]', "must be a JSON object"),
        ('{"tok": 7}', "must be a JSON object"),
        ('{"": "sbx_key"}', "must be a JSON object"),
        ("{}", "lists no token"),
    ],
)
def test_a_bad_token_file_is_refused_by_name(tmp_path: Path, text: str, said: str) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(text)
    err = refused("--transport", "http", "--tokens", str(tokens))
    assert f"--tokens {tokens}" in err and said in err


def test_a_missing_token_file_is_refused(tmp_path: Path) -> None:
    err = refused("--transport", "http", "--tokens", str(tmp_path / "absent.json"))
    assert "No such file" in err


def test_tokens_are_for_http_only(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"tok": "sbx_key"}')
    assert "--transport http" in refused("--tokens", str(tokens))


def test_http_beyond_loopback_needs_tokens() -> None:
    err = refused("--transport", "http", "--host", "0.0.0.0")
    assert "not loopback" in err and "--tokens" in err
