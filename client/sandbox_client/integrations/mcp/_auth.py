"""Bearer tokens on the HTTP transport: each token an MCP host presents maps to the
API key of the service's tenant it acts for. A token not in the map is refused (401)
before any tool runs."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken

# The AccessToken's client_id when the map sends no API key (a server without tenants).
NO_API_KEY = ""


class TokenMap:
    """mcp's TokenVerifier over a fixed {bearer token: API key} map ("" for none)."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            raise ValueError("a token map needs at least one token")
        if any(not token for token in tokens):
            raise ValueError("an empty bearer token would let anyone in")
        self._tokens = dict(tokens)

    async def verify_token(self, token: str) -> AccessToken | None:
        for known, api_key in self._tokens.items():
            # Compared in constant time: the token is a secret.
            if hmac.compare_digest(known.encode(), token.encode()):
                return AccessToken(token=token, client_id=api_key or NO_API_KEY, scopes=[])
        return None


def caller_api_key(default: str | None) -> str | None:
    """The API key of this call's tenant: the bearer token's on HTTP with a token map,
    else `default` (stdio, or HTTP on loopback without tokens)."""
    token = get_access_token()
    if token is None:
        return default
    return token.client_id or None
