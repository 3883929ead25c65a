"""Limits a policy allows but a container cannot be made with are refused up front as
INVALID_REQUEST naming the field and the minimum (it was INFRA_UNAVAILABLE, retryable,
on every attempt), by the planner through a real server and by `sandbox policy lint`."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.backends.container.minimums import CONTAINER_MINIMUMS
from sandbox.cli.commands import main
from sandbox_client import FailureKind, Limits, RequestRefused
from tests.backends.container.conftest import Lab

pytestmark = pytest.mark.docker


@pytest.mark.parametrize("field", sorted(CONTAINER_MINIMUMS))
@pytest.mark.parametrize("value", [1, "just below"])
def test_a_limit_below_the_container_minimum_is_invalid_request(
    lab: Lab, field: str, value: int | str
) -> None:
    minimum = CONTAINER_MINIMUMS[field].value
    asked = minimum - 1 if value == "just below" else value
    result = lab.execute("print(1)", limits=Limits(**{field: asked}))
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.INVALID_REQUEST, failure
    assert f"limits.{field}={asked} is below the container backend's minimum {minimum}" in (
        failure.message
    )
    assert not failure.retryable
    # A session is refused the same way.
    with lab.client() as client, pytest.raises(RequestRefused) as refused:
        client.create_session(backend="container", policy="lab", limits=Limits(**{field: asked}))
    assert refused.value.failure.kind is FailureKind.INVALID_REQUEST


def test_every_limit_at_its_minimum_runs(lab: Lab) -> None:
    # The minimums are the measured ones: at all of them at once the runner starts and
    # runs the code, under runc and runsc.
    at = Limits(**{field: minimum.value for field, minimum in CONTAINER_MINIMUMS.items()})
    result = lab.execute("print(1)", limits=at, timeout_s=120)
    assert result.ok, result.failure
    assert result.stdout == "1\n"


def test_auto_stays_in_monty_under_limits_no_container_takes(lab: Lab) -> None:
    tiny = Limits(pids=1)
    monty = lab.execute("1 + 1", backend="auto", policy="default", limits=tiny)
    assert monty.ok and monty.result == 2 and monty.backend == "monty"
    # What only a container could run is not sent to one that cannot start.
    needs_cpython = lab.execute("import zipfile\n1", backend="auto", policy="default", limits=tiny)
    assert needs_cpython.failure is not None
    assert needs_cpython.failure.kind is FailureKind.UNSUPPORTED, needs_cpython.failure


def test_policy_lint_refuses_a_container_policy_below_the_minimums(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text('backends = ["container"]\nallow_fallback = false\npids = 1\ncpu_millis = 1\n')
    assert main(["policy", "lint", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:3: pids: 1 is below the container backend's minimum 3" in out
    assert f"{path}:4: cpu_millis: 1 is below the container backend's minimum 50" in out
    # Without containers the same limits are Monty's business.
    path.write_text('backends = ["monty"]\nallow_fallback = false\npids = 1\ncpu_millis = 1\n')
    assert main(["policy", "lint", str(path)]) == 0
