"""An MCP server over the sandbox service, on the official `mcp` SDK
(`pip install 'sandbox-client[mcp]'`). `sandbox mcp` runs it; to embed it:

    server = build_server("127.0.0.1:50051", catalog=Catalog(...))
    server.run("stdio")                      # or: server.run("streamable-http", port=8000)

Tools: `run_python` (the whole ExecutionResult as structured content; a failed run is
an `isError` result with the failure's one-line message), `create_session`,
`close_session`. Resources: `sandbox://policies` (and one `sandbox://policies/NAME` each),
`sandbox://backends`. On HTTP, `tokens={bearer token: API key}` requires a token and
runs each call as its tenant."""

from ... import _names
from ._auth import TokenMap
from ._catalog import Catalog, PolicyInfo
from ._server import RunOutput, build_server

__all__ = ["Catalog", "PolicyInfo", "RunOutput", "TokenMap", "build_server"]

_names.publish(__name__, globals(), __all__)
