"""Wire requests into the core's Request: every bad field is INVALID_REQUEST naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.audit.log import log_files
from sandbox.edge.decode import request_of, run_start_of
from sandbox.errors import InvalidRequest
from sandbox_client import FailureKind, SandboxClient
from sandbox_client.protocol.models import Backend, Limits
from sandbox_client.protocol.v1 import sandbox_pb2
from tests.conftest import running_server

ExecuteRequest = sandbox_pb2.ExecuteRequest


def test_a_request_decodes_with_its_fields() -> None:
    msg = sandbox_pb2.ExecuteRequest(
        code="x + 1",
        backend=sandbox_pb2.MONTY,
        policy="p",
        inputs_json='{"x": 41}',
        limits=sandbox_pb2.Limits(memory_bytes=1024),
        idempotency_key="k",
    )
    request = request_of(msg, tenant="t")
    assert request.backend is Backend.MONTY and request.inputs == {"x": 41}
    assert request.limits == Limits(memory_bytes=1024) and request.tenant == "t"
    assert request.inputs_size == len('{"x": 41}') and not request.is_tool_run


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (sandbox_pb2.ExecuteRequest(code="a\x00b"), "code"),
        (sandbox_pb2.ExecuteRequest(code="1", backend=99), "backend"),  # type: ignore[arg-type]
        (sandbox_pb2.ExecuteRequest(code="1", inputs_json="{"), "inputs_json"),
        (sandbox_pb2.ExecuteRequest(code="1", inputs_json="[1]"), "inputs_json"),
        (sandbox_pb2.ExecuteRequest(code="1", inputs_json='{"not valid": 1}'), "inputs_json"),
        (sandbox_pb2.ExecuteRequest(code="1", inputs_json="[" * 100_000), "inputs_json"),
        (
            sandbox_pb2.ExecuteRequest(code="1", limits=sandbox_pb2.Limits(pids=-1)),
            "limits.pids",
        ),
        (sandbox_pb2.ExecuteRequest(code="1", filename="a\nb.py"), "filename"),
        (sandbox_pb2.ExecuteRequest(code="1", filename="x" * 256), "filename"),
        (sandbox_pb2.ExecuteRequest(code="1", filename="\x1b[31mred"), "filename"),
    ],
)
def test_bad_fields_are_refused_by_name(msg: sandbox_pb2.ExecuteRequest, field: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        request_of(msg, tenant="t")
    assert refused.value.field == field


def test_a_filename_names_the_codes_frames_in_both_backends(client: SandboxClient) -> None:
    failed = client.execute("def f():\n    1 / 0\nf()", backend="monty", filename="job.py")
    assert failed.failure is not None
    assert [(f.filename, f.line) for f in failed.failure.frames] == [("job.py", 3), ("job.py", 2)]
    plain = client.execute("1 / 0", backend="monty")
    assert plain.failure is not None and plain.failure.frames[0].filename == "<code>"


def test_a_run_must_start_with_start() -> None:
    for first in (None, object(), sandbox_pb2.RunRequest(tool_result=sandbox_pb2.ToolResult())):
        with pytest.raises(InvalidRequest) as refused:
            run_start_of(first, tenant="t")
        assert refused.value.field == "start"
    start = sandbox_pb2.RunRequest(
        start=sandbox_pb2.RunStart(
            request=sandbox_pb2.ExecuteRequest(code="f()"),
            tools=[sandbox_pb2.ToolSpec(name="f", is_async=True)],
        )
    )
    request = run_start_of(start, tenant="t")
    assert request.is_tool_run and request.method == "Run"
    assert [(t.name, t.is_async) for t in request.tools or ()] == [("f", True)]


def test_an_idempotency_key_is_at_most_256_bytes() -> None:
    assert request_of(ExecuteRequest(code="1", idempotency_key="k" * 256), tenant="t")
    # 128 two-byte characters: 256 bytes, the cap exactly.
    assert request_of(ExecuteRequest(code="1", idempotency_key="é" * 128), tenant="t")
    for key in ("k" * 257, "é" * 129, "k" * (7 * 1024 * 1024)):
        with pytest.raises(InvalidRequest) as refused:
            request_of(ExecuteRequest(code="1", idempotency_key=key), tenant="t")
        assert refused.value.field == "idempotency_key"
        assert len(refused.value.message) < 200  # the key itself is not echoed back


def test_a_long_key_is_refused_by_a_real_server_and_kept_nowhere(tmp_path: Path) -> None:
    key = "K" * (7 * 1024 * 1024)
    with running_server(audit={"dir": tmp_path}) as srv:
        with SandboxClient(srv.address, timeout_s=30) as client:
            refused = client.execute("1", idempotency_key=key)
            tool_run = client.run_tools("1", tools={}, idempotency_key=key)
            kept = client.execute("1", idempotency_key="k" * 256)
        for result in (refused, tool_run):
            failure = result.failure
            assert failure is not None and failure.kind is FailureKind.INVALID_REQUEST
            assert failure.details["field"] == "idempotency_key"
        assert kept.ok
        journal = srv.server.executor.journal
        assert journal is not None and journal.store.get("local", key) is None
        assert srv.server.audit is not None
        srv.server.audit.flush()
    written = sum(p.stat().st_size for p in log_files(tmp_path))
    assert written < 64 * 1024  # three records, not a 7 MiB key in one of them
