"""Exactly once, whatever the server's failure: a server-side exception is a classified
result (SANDBOX_CRASH, audited), a tool run keeps its journaled answers through it and
its retry resumes without calling an answered tool again; and every value the code can
produce reaches the caller classified, whichever encoder meets it."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.audit.log import log_files
from sandbox.backends.monty import tools as monty_tools
from sandbox.core.request import Request
from sandbox.durable.checkpoints import load_checkpoint_key
from sandbox.durable.durability import Durability
from sandbox.durable.journal import SqliteJournal, ToolAnswer
from sandbox.errors import InvalidRequest
from sandbox_client import Backend, ExecutionResult, FailureKind, SandboxClient
from sandbox_client.recovery import Abort, Outcome
from sandbox_client.testing import fast_recovery
from tests.conftest import ServerThread, running_server


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit")


@pytest.fixture(scope="module")
def audited(audit_dir: Path) -> Iterator[ServerThread]:
    with running_server(audit={"dir": audit_dir}) as srv:
        yield srv


def audit_records(srv: ServerThread, directory: Path) -> list[dict[str, Any]]:
    assert srv.server.audit is not None
    srv.server.audit.flush()
    return [
        json.loads(line)
        for path in log_files(directory)
        for line in path.read_text().splitlines()
        if line.strip()
    ]


class Payments:
    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.lock = threading.Lock()

    def send_payment(self, amount: Any = None, **kwargs: Any) -> str:
        with self.lock:
            self.calls.append(amount)
        return "paid"


def pay(server: ServerThread, payments: Payments, code: str, **options: Any) -> Outcome:
    """`client.run()` of `code` with `send_payment` as its tool, in Monty, retrying at once."""
    with SandboxClient(server.address, timeout_s=60) as client:
        return client.run(
            code,
            tools={"send_payment": payments.send_payment},
            backend="monty",
            recovery=fast_recovery(),
            **options,
        )


def fail_once(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> list[int]:
    """Makes `target.name` raise RuntimeError the first time it is called, for real."""
    original = getattr(target, name)
    raised = [0]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if not raised[0]:
            raised[0] += 1
            raise RuntimeError("a bug in the server")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, flaky)
    return raised


# -- a server-side exception ---------------------------------------------------------------


def test_a_tool_answered_before_a_server_failure_is_not_called_again(
    audited: ServerThread, audit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host's clock read fails once, after send_payment was answered and journaled.
    raised = fail_once(monkeypatch, monty_tools, "_read_clock")
    payments = Payments()
    code = "receipt = send_payment(100)\nimport time\nt = time.time()\nreceipt"
    outcome = pay(audited, payments, code)
    assert raised == [1]
    assert outcome.ok, outcome.failure
    assert outcome.result.result == "paid"
    assert payments.calls == [100]  # answered once, resumed from the journal after
    kinds = [a.failure_kind for a in outcome.attempts]
    assert kinds == [FailureKind.SANDBOX_CRASH, None]
    keys = {a.idempotency_key for a in outcome.attempts}
    assert len(keys) == 1  # the retry was the same run, resumed
    crashed = [r for r in audit_records(audited, audit_dir) if r.get("kind") == "SANDBOX_CRASH"]
    assert any(r["idempotency_key"] in keys for r in crashed), "the failure was not audited"


def test_a_server_failure_in_a_plain_run_is_a_classified_audited_result(
    audited: ServerThread, audit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend: Any = audited.server.executor.backends[Backend.MONTY]
    fail_once(monkeypatch, backend, "_feed")
    with SandboxClient(audited.address, timeout_s=60) as client:
        crashed = client.execute("6 * 7", backend="monty", idempotency_key="k-plain-crash")
        again = client.execute("6 * 7", backend="monty", idempotency_key="k-plain-crash")
    failure = crashed.failure
    assert failure is not None and failure.kind is FailureKind.SANDBOX_CRASH, failure
    assert failure.retryable
    assert "RuntimeError" in failure.message and "a bug in the server" not in failure.message
    assert again.ok and again.result == 42 and not again.replayed  # the retry really ran
    records = [
        r for r in audit_records(audited, audit_dir) if r.get("idempotency_key") == "k-plain-crash"
    ]
    assert [r["kind"] for r in records] == ["SANDBOX_CRASH", "OK"]


@pytest.mark.parametrize("target", ["_feed", "plan"])
def test_a_server_failure_without_a_key_is_classified_too(
    audited: ServerThread, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    executor = audited.server.executor
    owner: Any = executor if target == "plan" else executor.backends[Backend.MONTY]
    fail_once(monkeypatch, owner, target)
    with SandboxClient(audited.address, timeout_s=60) as client:
        crashed = client.execute("6 * 7", backend="monty")
        after = client.execute("6 * 7", backend="monty")
    assert crashed.failure is not None and crashed.failure.kind is FailureKind.SANDBOX_CRASH
    assert after.ok


# -- values only the code makes ----------------------------------------------------------

HUGE = "10**5000"


@pytest.mark.parametrize(
    "code",
    [
        f"send_payment(100)\n{HUGE}",
        f"send_payment(100)\n[1, {HUGE}]",
        f"send_payment(100)\n{{{HUGE}: 'key'}}",
        f"send_payment({HUGE})\n'sent'",
        f"send_payment(100, memo={HUGE})\n'sent'",
        f"send_payment([{HUGE}, {{1, 2}}, b'x', float('nan')])\n'sent'",
        "send_payment(100)\nimport time\ntime.sleep(10**400)",
        "send_payment(100)\nimport datetime\ndatetime.datetime.now(5)",
        "send_payment(100)\nraise ValueError('x' * 3_000_000)",
    ],
)
def test_every_value_the_code_makes_reaches_the_caller_classified(
    audited: ServerThread, audit_dir: Path, code: str
) -> None:
    payments = Payments()
    outcome = pay(audited, payments, code, escalate=lambda _: Abort())
    assert len(payments.calls) == 1, payments.calls
    assert len(outcome.attempts) == 1, [a.failure_kind for a in outcome.attempts]
    failure = outcome.result.failure
    assert failure is None or failure.kind is FailureKind.RUNTIME_ERROR, failure
    key = outcome.attempts[0].idempotency_key
    assert any(r.get("idempotency_key") == key for r in audit_records(audited, audit_dir))


def test_a_huge_last_value_is_shown_by_its_size(client: SandboxClient) -> None:
    result = client.execute(f"[1, {HUGE}]", backend="monty")
    assert result.ok, result.failure
    assert result.result == "[1, <int of about 5001 digits>]"


def test_a_call_too_large_for_the_wire_is_refused_at_the_call(audited: ServerThread) -> None:
    payments = Payments()
    code = (
        "try:\n"
        "    send_payment('x' * 9_000_000)\n"
        "except ValueError as e:\n"
        "    refused = str(e)\n"
        "send_payment(1)\n"
        "refused"
    )
    with SandboxClient(audited.address, timeout_s=60) as client:
        result = client.run_tools(code, tools={"send_payment": payments.send_payment})
    assert result.ok, result.failure
    assert payments.calls == [1]
    assert "a tool call carries at most" in result.result


# -- Durability.once on its own ------------------------------------------------------------


def durability(tmp_path: Path) -> Durability:
    key = load_checkpoint_key(None, tmp_path / "checkpoint.key")
    return Durability(SqliteJournal(tmp_path / "journal.db"), checkpoint_key=key, retention_s=60)


def tool_request(key: str) -> Request:
    return Request(method="Run", tenant="t", code="f()", idempotency_key=key, tools=())


def answer(seq: int) -> ToolAnswer:
    return ToolAnswer(
        seq=seq, name="f", args_json="[]", kwargs_json="{}", answer_json='{"value": 1}'
    )


async def test_once_turns_an_exception_into_a_crash_and_keeps_the_answers(
    tmp_path: Path,
) -> None:
    journal = durability(tmp_path)
    request = tool_request("k-crash")

    async def run(entry: Any) -> ExecutionResult:
        journal.store.record_answer("t", "k-crash", answer(1), now=0.0)
        raise KeyError("a bug")

    result = await journal.once(request, run, resumable=True)
    assert result.failure is not None and result.failure.kind is FailureKind.SANDBOX_CRASH
    entry = journal.store.get("t", "k-crash")
    assert entry is not None and set(entry.answers) == {1}

    async def resumed(entry: Any) -> ExecutionResult:
        assert set(entry.answers) == {1}  # the retry sees the answer: no second call
        return ExecutionResult(ok=True)

    assert (await journal.once(request, resumed, resumable=True)).ok
    await journal.stop()


async def test_a_refusal_keeps_a_tool_runs_answers_and_drops_an_empty_claim(
    tmp_path: Path,
) -> None:
    journal = durability(tmp_path)

    async def refused_after_answer(entry: Any) -> ExecutionResult:
        journal.store.record_answer("t", "k-answered", answer(1), now=0.0)
        raise InvalidRequest("refused", field="policy")

    async def refused(entry: Any) -> ExecutionResult:
        raise InvalidRequest("refused", field="policy")

    with pytest.raises(InvalidRequest):
        await journal.once(tool_request("k-answered"), refused_after_answer, resumable=True)
    with pytest.raises(InvalidRequest):
        await journal.once(tool_request("k-empty"), refused, resumable=True)
    kept = journal.store.get("t", "k-answered")
    assert kept is not None and set(kept.answers) == {1}
    assert journal.store.get("t", "k-empty") is None
    await asyncio.sleep(0)
    await journal.stop()
