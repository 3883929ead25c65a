"""Shadow checking (core/shadow.py): AUTO's Monty successes, sampled, run again in a real
container off the request path; mismatches counted, kept and dumped by
`sandbox fidelity report`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sandbox.backends.base import RunSpec
from sandbox.backends.container.backend import ContainerBackend
from sandbox.backends.monty.divergence import BY_ID
from sandbox.cli.commands import main
from sandbox.core.shadow import MISMATCHES_FILE, Sample, ShadowChecker, code_digest
from sandbox_client import Backend, ExecutionResult, SandboxClient
from tests.backends.container.conftest import CONTAINER
from tests.conftest import ServerThread, limits, running_server

pytestmark = pytest.mark.docker

SET_ORDER = BY_ID["set-order"].example  # Monty prints (5, 4), CPython (4, 5)
SHADOWED = """
name = "shadowed"
fidelity_routing = false   # so that Monty answers, and the shadow check sees it
shadow_sample_rate = 1.0
"""


def sample(code: str, monty_stdout: str, *, keep_code: bool = True) -> Sample:
    return Sample(
        spec=RunSpec(code=code, limits=limits()),
        monty=ExecutionResult(ok=True, backend=Backend.MONTY, stdout=monty_stdout),
        execution_id="exe_test",
        policy="p",
        keep_code=keep_code,
    )


async def test_a_mismatch_is_counted_kept_and_reported(
    runc_backend: ContainerBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes: list[str] = []
    checker = ShadowChecker(runc_backend, state_dir=tmp_path, count=outcomes.append)
    assert await checker.check(sample("print(2 + 2)", "4\n")) is None
    found = await checker.check(sample(SET_ORDER, "(5, 4)\n"))
    assert found is not None
    assert (found.monty_stdout, found.cpython_stdout) == ("(5, 4)\n", "(4, 5)\n")
    assert found.digest == code_digest(SET_ORDER) and found.code == SET_ORDER
    hidden = await checker.check(sample(SET_ORDER, "(5, 4)\n", keep_code=False))
    assert hidden is not None and hidden.code == ""
    assert outcomes == ["matched", "mismatched", "mismatched"]

    capsys.readouterr()  # the log lines so far
    assert main(["fidelity", "report", "--state-dir", str(tmp_path), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["code"] for line in lines] == [SET_ORDER, ""]
    assert {line["cpython_stdout"] for line in lines} == {"(4, 5)\n"}


async def test_a_container_that_cannot_answer_is_inconclusive(
    runc_backend: ContainerBackend, tmp_path: Path
) -> None:
    outcomes: list[str] = []
    checker = ShadowChecker(runc_backend, state_dir=tmp_path, count=outcomes.append)
    slow = sample("import time\ntime.sleep(5)", "")
    slow = Sample(
        spec=RunSpec(code=slow.spec.code, limits=limits(wall_time_ms=1000)),
        monty=slow.monty,
        execution_id="exe_test",
        policy="p",
        keep_code=True,
    )
    assert await checker.check(slow) is None
    assert outcomes == ["inconclusive"]
    assert not (tmp_path / MISMATCHES_FILE).exists()


async def test_no_check_runs_while_the_containers_are_busy(
    runc_backend: ContainerBackend, tmp_path: Path
) -> None:
    outcomes: list[str] = []
    checker = ShadowChecker(
        runc_backend, state_dir=tmp_path, count=outcomes.append, free_slot=lambda: False
    )
    assert await checker.check(sample(SET_ORDER, "(5, 4)\n")) is None
    assert outcomes == ["dropped"]


def test_through_a_server_auto_successes_are_shadowed_off_the_request_path(
    tmp_path: Path,
) -> None:
    (tmp_path / "shadowed.toml").write_text(SHADOWED)
    with running_server(
        container={"enabled": True, **CONTAINER}, policies={"dir": str(tmp_path)}
    ) as server:
        kept = Path(server.server.settings.journal.state_dir) / MISMATCHES_FILE
        with SandboxClient(server.address, timeout_s=120) as client:
            result = client.execute(SET_ORDER, policy="shadowed")
            # Answered before the container run (several hundred ms) could have ended.
            assert not kept.exists()
            assert result.ok and result.backend is Backend.MONTY
            assert result.stdout == "(5, 4)\n"
            # Not shadowed: another policy (rate 0), and a MONTY request.
            client.execute("print(1)")
            client.execute(SET_ORDER, backend="monty", policy="shadowed")
        shadow = server.server.executor.shadow
        assert shadow is not None
        server.call(asyncio.wait_for(shadow.idle.wait(), 60))
        mismatched = shadow_count(server, "mismatched")
    assert mismatched == 1
    lines = kept.read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["execution_id"] == result.execution_id


def test_shadowing_is_off_by_default(both_backends: ServerThread) -> None:
    with SandboxClient(both_backends.address, timeout_s=120) as client:
        assert client.execute("print(1)").ok
    shadow = both_backends.server.executor.shadow
    assert shadow is not None and shadow.queue.empty() and shadow.idle.is_set()
    assert shadow_count(both_backends, "matched") == 0


def shadow_count(server: ServerThread, outcome: str) -> float:
    registry = server.server.metrics.registry
    value = registry.get_sample_value("sandbox_fidelity_shadow_runs_total", {"outcome": outcome})
    return value or 0.0
