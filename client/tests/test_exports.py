"""Pins the public surface: a name added to or dropped from sandbox_client is a decision."""

import sandbox_client

EXPORTED = [
    "DEFAULT_ACTIONS",
    "DEFAULT_BUDGETS",
    "KIND_DEFAULTS",
    "Abort",
    "ApproveCode",
    "ApprovePolicy",
    "AsyncSandboxClient",
    "Attempt",
    "Backend",
    "Escalation",
    "EscalationHandler",
    "EscalationRequired",
    "ExecutionResult",
    "Failure",
    "FailureKind",
    "Frame",
    "Limits",
    "Outcome",
    "OutputChunk",
    "RecoveryAction",
    "RecoveryPolicy",
    "RepairFn",
    "Resolution",
    "SandboxClient",
    "SandboxError",
    "Session",
    "SuggestedAction",
    "TerminalPrompt",
    "Usage",
    "raise_escalation",
]


def test_exported_names_are_pinned() -> None:
    assert sandbox_client.__all__ == EXPORTED


def test_every_exported_name_exists_and_is_public() -> None:
    for name in sandbox_client.__all__:
        assert getattr(sandbox_client, name) is not None
    public = {n for n in vars(sandbox_client) if not n.startswith("_")}
    assert public - set(sandbox_client.__all__) <= {"annotations", "protocol"}


def test_sync_and_async_run_have_the_same_signature() -> None:
    import inspect

    sync = inspect.signature(sandbox_client.SandboxClient.run)
    async_ = inspect.signature(sandbox_client.AsyncSandboxClient.run)
    assert list(sync.parameters) == list(async_.parameters)
    assert [p.default for p in sync.parameters.values()] == [
        p.default for p in async_.parameters.values()
    ]
