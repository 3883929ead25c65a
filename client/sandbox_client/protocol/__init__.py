"""The public, versioned contract between the sandbox server and its clients.

- `sandbox_client.protocol.v1`: the generated message classes of proto/sandbox/v1.
- `models`: the result and failure models and the taxonomy's defaults (the models are
  also at the root: `sandbox_client.Failure`).
- `convert`: models to proto and back, and request errors' rich status both ways.
- `service`: the method table and a stub, read from the service descriptor.

The server depends on this package at the version pinned in its pyproject; anything
else in `sandbox_client` that starts with an underscore is the client's own."""

# The wire package this contract speaks; bumped with a new proto package (v2).
WIRE_VERSION = "v1"

__all__ = ["WIRE_VERSION"]
