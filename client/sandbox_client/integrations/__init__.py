"""Glue for the agent frameworks people use, each an optional extra of sandbox-client
that imports its framework only when used, so `import sandbox_client` keeps its own
few dependencies:

- `sandbox_client.integrations.mcp` (`sandbox-client[mcp]`): an MCP server over the
  service (`run_python`, `create_session`, `close_session`; the policies and backends as
  resources), over stdio or streamable HTTP. `sandbox mcp` runs it.
- `sandbox_client.integrations.smolagents` (`sandbox-client[smolagents]`): an executor
  for `CodeAgent(executor=...)` whose tools run in the agent's process over the Run RPC.
- `sandbox_client.integrations.langchain` (`sandbox-client[langchain]`): a LangChain
  tool that runs code.

pydantic-ai and the OpenAI Agents SDK consume MCP: give them `sandbox mcp`."""
