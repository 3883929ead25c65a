"""The Monty backend: a pool of pydantic-monty workers, warm sessions, tool runs with
checkpoints, and the one classifier of Monty outcomes."""
