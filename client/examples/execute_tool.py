"""A function-calling tool for any LLM API: the JSON schema the model sees
(`execute_code.json`, beside this file) and the handler that serves its calls.

In a tool-calling loop the model is the repair function: a failure comes back to it as
a classified, one-line message it can act on, while failures that are not the code's
fault (a crashed worker, a busy pool, a throttle) are retried here and never reach it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sandbox_client import EscalationRequired, RecoveryPolicy, SandboxClient
from sandbox_client.recovery import Outcome

SCHEMA_FILE = Path(__file__).with_name("execute_code.json")


class ExecuteArgs(BaseModel):
    """Run Python code in an isolated sandbox and get its output, its last expression's
    value, or a classified failure to fix."""

    model_config = ConfigDict(extra="forbid", title="execute_code")

    code: str = Field(description="Python source; the last expression's value is returned.")
    backend: Literal["auto", "monty", "container"] = Field(
        default="auto",
        description="auto: the fast Monty interpreter, falling back to a container.",
    )


def tool_schema() -> dict[str, Any]:
    """The tool as OpenAI-style function calling describes it (others take the same
    `parameters` JSON Schema)."""
    return json.loads(SCHEMA_FILE.read_text())  # type: ignore[no-any-return]


def for_the_model(outcome: Outcome) -> dict[str, Any]:
    """What the model reads back: small, JSON, and actionable."""
    answer: dict[str, Any] = {"ok": outcome.ok, "stdout": outcome.result.stdout}
    if outcome.ok:
        answer["result"] = outcome.result.result
    elif outcome.failure is not None:
        failure = outcome.failure
        answer["error"] = {
            "kind": failure.kind.value,
            "message": failure.message,
            "line": failure.line,
            "suggested_action": failure.suggested_action.value,
        }
    answer["attempts"] = len(outcome.attempts)
    return answer


# The model fixes its own code, so run() has no repair function here; REPAIR failures
# come straight back (as an escalation with the failure) instead of being retried.
TOOL_RECOVERY = RecoveryPolicy(max_total_s=60)


def execute_code(client: SandboxClient, arguments: dict[str, Any] | str) -> dict[str, Any]:
    """Serves one tool call. `arguments` as the API delivers them (a JSON string or a
    dict); invalid ones come back as an error the model can read."""
    try:
        args = (
            ExecuteArgs.model_validate_json(arguments)
            if isinstance(arguments, str)
            else ExecuteArgs.model_validate(arguments)
        )
    except ValueError as exc:
        return {"ok": False, "error": {"kind": "INVALID_ARGUMENTS", "message": str(exc)}}
    try:
        outcome = client.run(args.code, backend=args.backend, recovery=TOOL_RECOVERY)
    except EscalationRequired as raised:
        escalation = raised.escalation
        last = escalation.attempts[-1]
        failure = escalation.failure
        return {
            "ok": False,
            "error": {
                "kind": failure.kind.value if failure else "UNKNOWN",
                "message": failure.message if failure else escalation.reason,
                "line": failure.line if failure else None,
                "suggested_action": failure.suggested_action.value if failure else "ESCALATE",
            },
            "attempts": last.number,
        }
    return for_the_model(outcome)
