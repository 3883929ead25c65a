"""The tamper-evident audit log: one hash-chained JSON line per request, rotated by size,
with `verify` and `query`."""
