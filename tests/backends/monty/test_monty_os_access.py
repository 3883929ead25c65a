"""What `os_access = "none"` means in Monty, as the README and the policy field's comment
state it: no files and no environment (even with `os` importable), while the clock reads
the host's time in UTC (the host's zone is not shown), monotonic clocks read that same
clock, and process_time reads 0 (the code's own CPU time is not observable)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest

from sandbox_client import FailureKind, SandboxClient
from tests.conftest import running_server


@pytest.fixture(scope="module")
def os_importable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxClient]:
    """A server whose policy `osok` lets Monty code import os (the default denies it)."""
    policies = tmp_path_factory.mktemp("policies")
    (policies / "osok.toml").write_text("monty_denied_imports = []\n")
    with running_server(policies={"dir": policies}) as srv, SandboxClient(srv.address) as client:
        yield client


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos.environ.get('HOME')",
        "import os\nos.getenv('PATH')",
        "open('/etc/hostname').read()",
        "from pathlib import Path\nPath('/etc/hostname').read_text()",
        "from pathlib import Path\nPath('/tmp/x').write_text('x')",
    ],
)
def test_no_files_and_no_environment(os_importable: SandboxClient, code: str) -> None:
    result = os_importable.execute(code, backend="monty", policy="osok")
    assert result.failure is not None and result.failure.kind is FailureKind.POLICY_VIOLATION
    assert result.result is None


def test_the_clock_reads_host_time_in_utc(os_importable: SandboxClient) -> None:
    code = (
        "import time, datetime\n"
        "[time.time(), time.monotonic(), time.perf_counter(),\n"
        " datetime.datetime.now().isoformat(), datetime.date.today().isoformat(),\n"
        " time.timezone, list(time.tzname)]"
    )
    before = time.time()
    result = os_importable.execute(code, backend="monty", policy="osok")
    after = time.time()
    assert result.ok, result.failure
    wall, monotonic, perf, now, today, offset, names = result.result
    assert before - 1 <= wall <= after + 1
    assert before - 1 <= monotonic <= after + 1 and before - 1 <= perf <= after + 1
    utc_now = dt.datetime.fromisoformat(now).replace(tzinfo=dt.UTC).timestamp()
    assert before - 1 <= utc_now <= after + 1  # naive now() is UTC, whatever the host's zone
    assert today == dt.datetime.fromtimestamp(wall, dt.UTC).date().isoformat()
    assert offset == 0 and names == ["UTC", "UTC"]


def test_the_codes_cpu_time_is_not_observable(os_importable: SandboxClient) -> None:
    code = "import time\nx = 0\nfor i in range(200_000):\n    x += i\ntime.process_time()"
    result = os_importable.execute(code, backend="monty", policy="osok")
    assert result.ok and result.result == 0.0


def test_the_default_policy_reads_the_clock_too(client: SandboxClient) -> None:
    result = client.execute("import datetime\ndatetime.datetime.now().year", backend="monty")
    assert result.ok and result.result == dt.datetime.now(dt.UTC).year
