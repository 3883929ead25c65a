"""The gRPC edge, the only server code that touches generated types: decoding, the one per-
RPC wrapper (authenticate, admit, record, status details), the service and the Run
stream."""
