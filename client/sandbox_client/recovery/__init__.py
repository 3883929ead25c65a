"""What `run()` does about failures, for callers who tune it or answer its escalations.

A first `run()` needs only `RecoveryPolicy` and `EscalationRequired`, both at the root
(`from sandbox_client import RecoveryPolicy`). Here is the rest of the vocabulary:

- `RecoveryAction`, `DEFAULT_ACTIONS`, `DEFAULT_BUDGETS`: what each failure kind leads
  to, for `RecoveryPolicy(actions=..., budget_per_kind=...)`.
- `Outcome` and `Attempt`: what `run()` returns, one attempt per execution.
- `Escalation` and its answers `ApproveCode`, `ApprovePolicy`, `Abort` (together
  `Resolution`); `TerminalPrompt` and `raise_escalation` (the default) as handlers.
- `RepairFn`, `EscalationHandler` and their async forms: the callables `run()` takes.
"""

from .. import _names
from ._models import (
    DEFAULT_ACTIONS,
    DEFAULT_BUDGETS,
    Abort,
    ApproveCode,
    ApprovePolicy,
    Attempt,
    Escalation,
    Outcome,
    RecoveryAction,
    Resolution,
    TerminalPrompt,
    raise_escalation,
)
from ._run import AsyncEscalationHandler, AsyncRepairFn, EscalationHandler, RepairFn

__all__ = [
    "DEFAULT_ACTIONS",
    "DEFAULT_BUDGETS",
    "Abort",
    "ApproveCode",
    "ApprovePolicy",
    "AsyncEscalationHandler",
    "AsyncRepairFn",
    "Attempt",
    "Escalation",
    "EscalationHandler",
    "Outcome",
    "RecoveryAction",
    "RepairFn",
    "Resolution",
    "TerminalPrompt",
    "raise_escalation",
]

_names.publish(__name__, globals(), __all__)

# Design note: the decisions (_state.RunState) are pure and have no I/O; the sync and
# async drivers (_run) only carry them out, so both clients recover alike and the
# property tests reach every rule without a server. RecoveryPolicy lives in _models with
# the rest but is exported from the root, its one public home: it is what a first run()
# call passes.
