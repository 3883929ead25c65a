"""The `sandbox` command line."""

from sandbox.cli.commands import main

__all__ = ["main"]
