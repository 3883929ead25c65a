"""A real smolagents CodeAgent, driven by a scripted model instead of an LLM, runs to its
final answer through the service with SandboxExecutor: state carries across steps, the
step after a failure sees the classified message, and the agent's tool is called from the
sandboxed code but runs here, in the agent's process."""

from __future__ import annotations

import os
from typing import Any

import pytest
from smolagents import CodeAgent, Model, tool
from smolagents.models import ChatMessage, MessageRole
from smolagents.utils import AgentError

from sandbox_client import Limits, SandboxClient
from sandbox_client.integrations._steps import Steps
from sandbox_client.integrations.smolagents import SandboxExecutor

tool_calls: list[tuple[str, int]] = []


@tool
def get_weather(city: str) -> dict[str, Any]:
    """The weather in a city.

    Args:
        city: the city's name
    """
    tool_calls.append((city, os.getpid()))
    return {"city": city, "temp_c": 21}


class ScriptedModel(Model):  # type: ignore[misc]
    """Answers each step with the next canned action; keeps what it was shown."""

    def __init__(self, actions: list[str]) -> None:
        super().__init__(model_id="scripted")
        self.actions = list(actions)
        self.seen: list[str] = []

    def generate(self, messages: list[Any], **kwargs: Any) -> ChatMessage:
        self.seen.append(
            "\n".join(str(m.content if hasattr(m, "content") else m) for m in messages)
        )
        code = self.actions.pop(0)
        return ChatMessage(
            role=MessageRole.ASSISTANT, content=f"Thought: go.\n<code>\n{code}\n</code>"
        )


STEPS = [
    # 1: the agent's tool, called from the sandbox; its value kept for later steps.
    'report = get_weather("Lisbon")\nprint("got", report["city"])\ncelsius = report["temp_c"]',
    # 2: fails (index out of range), in the step's own line 2.
    "xs = [celsius]\nxs[5]",
    # 3: a function and a value, for the next step.
    "def to_f(c):\n    return c * 9 / 5 + 32\nunit = 'F'",
    # 4: the final answer, using all of the above.
    "final_answer({'value': round(to_f(celsius), 1), 'unit': unit})",
]


def test_code_agent_runs_to_its_final_answer(client: SandboxClient) -> None:
    tool_calls.clear()
    model = ScriptedModel(STEPS)
    agent = CodeAgent(
        tools=[get_weather],
        model=model,
        executor=SandboxExecutor(client, backend="monty"),
        max_steps=6,
        verbosity_level=0,
    )
    answer = agent.run("How warm is Lisbon in Fahrenheit?")

    assert answer == {"value": 69.8, "unit": "F"}
    assert model.actions == []  # four steps, no more
    # The tool ran once, in this process (the code ran in a Monty worker).
    assert tool_calls == [("Lisbon", os.getpid())]
    # Step 3's model call saw step 2's classified failure, its line in its own code.
    assert "RUNTIME_ERROR: IndexError: list index out of range (line 2: xs[5])" in model.seen[2]
    assert "__sbx" not in model.seen[2]
    assert "RUNTIME_ERROR" not in model.seen[1]
    # Step 2's model call saw step 1's output.
    assert "got Lisbon" in model.seen[1]


def test_failure_raises_agent_error_with_the_classified_message(client: SandboxClient) -> None:
    executor = SandboxExecutor(client, backend="monty", limits=Limits(wall_time_ms=300))
    executor.send_tools({})
    executor.send_variables({"n": 3})
    assert executor("n * 2").output == 6
    executor("import math\ndef g():\n    return math.floor(2.5)")
    with pytest.raises(AgentError) as after_prelude:
        executor("y = g()\n[][y]")  # line 2 of this step, line 5 of what ran
    assert "IndexError: list index out of range (line 2: [][y])" in after_prelude.value.message
    with pytest.raises(AgentError) as raised:
        executor("n +")
    assert "SYNTAX_ERROR" in raised.value.message
    with pytest.raises(AgentError) as timeout:
        executor("while True:\n    pass")
    assert "Executing code yielded an error:\nTIMEOUT: " in timeout.value.message
    with pytest.raises(TypeError):
        executor.send_variables({"f": object()})  # not JSON: said at once, not lost later
    with pytest.raises(ValueError, match="installs no packages"):
        executor.install_packages(["numpy"])


def test_steps_carry_values_and_definitions() -> None:
    steps = Steps()
    program = steps.program("import math\ndef f(a):\n    return a + 1\nx = f(1); math.sqrt(16)")
    assert program.splitlines()[3].startswith("x = f(1); __sbx_out = (math.sqrt(16)")
    assert steps.absorb("import math\ndef f(a):\n    return a + 1\nx = 2", [4.0, {"x": 2}]) == 4.0
    assert steps.values == {"x": 2}
    assert steps.definitions == ["import math", "def f(a):\n    return a + 1"]
    assert steps.prelude_lines() == 3
    assert steps.program("x +") == "x +"  # the service reports the syntax error
