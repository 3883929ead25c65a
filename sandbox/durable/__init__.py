"""Exactly-once over a JournalStore: replies answered once per idempotency key, tool-run
answers and checkpoints journaled and signed so a run survives its server or client."""
