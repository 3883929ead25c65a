"""The core, which knows nothing of gRPC: the request type, the one planning module, the
executor (plain runs, tool runs, sessions), sessions, output capture and the recorder."""
