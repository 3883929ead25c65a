"""A Run's audit record says what governed it, as an Execute's does (the policy's digest
and the limits applied), and says that its wall time leaves out the time spent waiting
for tools."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

from sandbox.audit.log import log_files
from sandbox_client import Limits, SandboxClient
from tests.conftest import running_server


def records_of(directory: Path) -> list[dict[str, Any]]:
    (only,) = log_files(directory)
    return [json.loads(line) for line in only.read_bytes().splitlines()]


def test_a_run_record_carries_the_policy_digest_and_limits(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "tight.toml").write_text(
        textwrap.dedent("""
        wall_time_ms = 4_000
        memory_bytes = 64_000_000
        """)
    )

    def slow() -> int:
        time.sleep(0.3)
        return 1

    with running_server(audit={"dir": tmp_path / "audit"}, policies={"dir": policies}) as srv:
        with SandboxClient(srv.address, timeout_s=30) as c:
            asked = Limits(wall_time_ms=3_000)
            run = c.run_tools("slow()", tools={"slow": slow}, policy="tight", limits=asked)
            execute = c.execute("1", policy="tight", limits=asked)
        assert run.ok and execute.ok
        assert srv.server.audit is not None
        srv.server.audit.flush()
    by_method = {r["method"]: r for r in records_of(tmp_path / "audit")}
    ran, executed = by_method["Run"], by_method["Execute"]
    assert ran["policy"] == "tight" and ran["policy_digest"] == run.policy_digest
    assert ran["policy_digest"].startswith("sha256:")
    assert ran["policy_digest"] == executed["policy_digest"]
    # The limits applied: the request's lower wall time, the policy's memory.
    assert ran["limits"]["wall_time_ms"] == 3_000
    assert ran["limits"]["memory_bytes"] == 64_000_000
    assert ran["limits"] == executed["limits"]
    # 300 ms spent waiting on the tool is not in the code's wall time, and the record says so.
    assert ran["usage"]["wall_ms"] < 300
    assert ran["wall_excludes_tool_waits"] is True
    assert "wall_excludes_tool_waits" not in executed
