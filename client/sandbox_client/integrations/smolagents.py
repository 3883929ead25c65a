"""A smolagents executor: `CodeAgent(tools=..., model=..., executor=SandboxExecutor(client))`
runs each step's code in the sandbox service (`pip install 'sandbox-client[smolagents]'`).

It keeps smolagents' RemotePythonExecutor contract, with one difference that is the
point: the agent's tools are not pickled into the sandbox. Each is declared to the Run
RPC and called from the sandboxed code like a function, in the agent's process (so a
tool keeps its credentials and network, and the code has neither).

- `send_tools`: remembers the tools; `final_answer` among them records the answer and
  stops the code (as smolagents' FinalAnswerException does), and the step returns
  `CodeOutput(is_final_answer=True)`.
- `send_variables`: JSON values bound in the code's namespace for every later step.
- state across steps: the service's tool runs take no session, so it is carried
  client-side (sandbox_client.integrations._steps): each successful step's top-level
  JSON values come back and are bound for the next, its `def`/`class`/`import`s are run
  again before it. Values of a step that failed are lost, as are non-JSON values.
- a step that fails raises smolagents' AgentError with the classified message
  (`RUNTIME_ERROR: IndexError: ... (line 2: ...)`), which CodeAgent shows the model in
  the next step, line numbers counted in the step's own code."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from smolagents.local_python_executor import CodeOutput
from smolagents.monitoring import AgentLogger, LogLevel
from smolagents.remote_executors import RemotePythonExecutor
from smolagents.utils import AgentError

from .._client import SandboxClient
from .._request import BackendName
from ..protocol.models import Backend, Failure, Limits
from ._steps import Steps

__all__ = ["SandboxExecutor"]

FINAL_ANSWER = "final_answer"


class FinalAnswerException(Exception):  # the name the sandboxed code sees, as smolagents'
    """Raised into the code by final_answer(): ends the step there."""


class SandboxExecutor(RemotePythonExecutor):  # type: ignore[misc]  # smolagents is untyped
    """Runs CodeAgent steps through `client` (SandboxClient), one Run RPC per step."""

    def __init__(
        self,
        client: SandboxClient,
        *,
        backend: BackendName = Backend.AUTO,
        policy: str = "",
        limits: Limits | None = None,
        logger: AgentLogger | None = None,
    ) -> None:
        super().__init__(additional_imports=[], logger=logger or AgentLogger(LogLevel.OFF))
        self.client = client
        self.backend = backend
        self.policy = policy
        self.limits = limits
        self.steps = Steps()
        self.tools: dict[str, Any] = {}
        self._answer: list[Any] = []

    def install_packages(self, additional_imports: list[str]) -> list[str]:
        if additional_imports:
            raise ValueError(
                "the sandbox installs no packages at run time: use a policy whose image has "
                f"them (asked for {', '.join(additional_imports)})"
            )
        return []

    def send_tools(self, tools: Mapping[str, Any]) -> None:
        self.tools = {
            name: self._final_answer if name == FINAL_ANSWER else _host_call(tool)
            for name, tool in tools.items()
        }

    def send_variables(self, variables: dict[str, Any]) -> None:
        self.steps.bind(variables)

    def _final_answer(self, *args: Any, **kwargs: Any) -> None:
        answer = kwargs["answer"] if "answer" in kwargs else (args[0] if args else None)
        self._answer = [answer]
        raise FinalAnswerException("the final answer was given")

    def run_code_raise_errors(self, code: str) -> CodeOutput:
        self._answer = []
        result = self.client.run_tools(
            self.steps.program(code),
            tools=self.tools,
            inputs=self.steps.values,
            backend=self.backend,
            policy=self.policy,
            limits=self.limits,
        )
        logs = result.stdout + result.stderr
        if self._answer:
            return CodeOutput(output=self._answer[0], logs=logs, is_final_answer=True)
        if result.failure is not None:
            message = self.failure_message(result.failure)
            raise AgentError(f"{logs}\nExecuting code yielded an error:\n{message}", self.logger)
        return CodeOutput(
            output=self.steps.absorb(code, result.result), logs=logs, is_final_answer=False
        )

    def failure_message(self, failure: Failure) -> str:
        """The failure's one line, said of the step's own code."""
        return f"{failure.kind.value}: {self.steps.in_step_terms(failure.message, failure.line)}"

    def cleanup(self) -> None:
        self.steps = Steps()


def _host_call(tool: Any) -> Any:
    """The tool as a plain function (its declaration to the Run RPC): called with the
    code's arguments, here, in the agent's process."""

    @functools.wraps(tool.forward if hasattr(tool, "forward") else tool)
    def call(*args: Any, **kwargs: Any) -> Any:
        return tool(*args, **kwargs)

    return call
