"""The exception tree (one root, SandboxError, every exception carrying its Failure) and
ExecutionResult.raise_for_failure(), which turns a failed result into one of them."""

from __future__ import annotations

import pytest

import sandbox_client
from sandbox_client import (
    EscalationRequired,
    ExecutionFailed,
    ExecutionResult,
    Failure,
    FailureKind,
    RecoveryPolicy,
    RequestRefused,
    SandboxClient,
    SandboxError,
)
from sandbox_client._exceptions import __doc__ as TREE_DOC
from sandbox_client._request import RequestFailure
from sandbox_client.recovery import Escalation, RecoveryAction


def every_subclass(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= every_subclass(sub)
    return found


def test_the_tree_has_one_root_and_its_docstring_draws_all_of_it() -> None:
    assert every_subclass(SandboxError) == {RequestRefused, ExecutionFailed, EscalationRequired}
    assert TREE_DOC is not None
    for cls in (SandboxError, *every_subclass(SandboxError)):
        assert cls.__name__ in TREE_DOC
        assert getattr(sandbox_client, cls.__name__) is cls  # exported at the root


def test_raise_for_failure_returns_an_ok_result_itself(client: SandboxClient) -> None:
    result = client.execute("6 * 7")
    assert result.raise_for_failure() is result
    assert client.execute("6 * 7").raise_for_failure().result == 42  # so it chains


def test_raise_for_failure_raises_a_failed_result_with_it(client: SandboxClient) -> None:
    result = client.execute("print('before')\nxs = []\nxs[1]")
    with pytest.raises(ExecutionFailed) as raised:
        result.raise_for_failure()
    assert raised.value.result is result
    assert raised.value.failure is result.failure
    assert raised.value.failure.kind is FailureKind.RUNTIME_ERROR
    assert raised.value.result.stdout == "before\n"
    assert isinstance(raised.value, SandboxError)
    assert str(raised.value).startswith("RUNTIME_ERROR: IndexError")


def test_raise_for_failure_on_a_result_without_its_failure_still_carries_one() -> None:
    with pytest.raises(ExecutionFailed) as raised:
        ExecutionResult(ok=False).raise_for_failure()
    assert raised.value.failure.kind is FailureKind.INFRA_UNAVAILABLE
    assert "names no failure" in raised.value.failure.message


def test_a_refused_session_request_is_request_refused(client: SandboxClient) -> None:
    with pytest.raises(RequestRefused) as raised:
        client.close_session("ses_never_made")
    failure = raised.value.failure
    assert failure.kind is FailureKind.INVALID_REQUEST
    assert isinstance(failure, RequestFailure) and failure.grpc_code == "NOT_FOUND"
    with pytest.raises(SandboxError):  # what callers that predate the tree catch
        client.close_session("ses_never_made")


def test_escalation_required_carries_the_escalation_and_its_failure(
    client: SandboxClient,
) -> None:
    recovery = RecoveryPolicy(actions={FailureKind.RUNTIME_ERROR: (RecoveryAction.ESCALATE,)})
    with pytest.raises(EscalationRequired) as raised:
        client.run("1 / 0", recovery=recovery)
    escalation = raised.value.escalation
    assert raised.value.failure is escalation.failure
    assert raised.value.failure.kind is FailureKind.RUNTIME_ERROR
    assert str(raised.value) == escalation.summary


def test_an_escalation_without_a_failure_says_the_budget_ran_out() -> None:
    escalation = Escalation(
        reason="the run used its 1 s",
        code="x",
        failure=None,
        attempts=(),
        budget_exhausted=True,
        summary="S",
    )
    failure: Failure = EscalationRequired(escalation).failure
    assert (failure.kind, failure.message) == (FailureKind.CANCELLED, "the run used its 1 s")
