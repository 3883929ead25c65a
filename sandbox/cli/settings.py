"""Settings for a command. Old flat setting names are reported the way the command
reports anything: `serve` in its log (so a JSON log stays JSON), the others on stderr."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from sandbox.config import DeprecatedSettingWarning, Settings, load_settings
from sandbox.errors import ConfigError

# `sandbox run --server` and `sandbox mcp --server` read the API key from here when
# --api-key is not given.
API_KEY_VARIABLE = "SANDBOX_API_KEY"


def load_with_notes(config_file: Path | None, **overrides: Any) -> tuple[Settings, list[str]]:
    """The settings, and a note per deprecated name they were given by. A ConfigError
    prints its notes first: an old name may be why the field is wrong."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecatedSettingWarning)
        try:
            settings = load_settings(config_file, **overrides)
        except ConfigError:
            print_notes(_notes(caught))
            raise
    return settings, _notes(caught)


def load_printing_notes(config_file: Path | None, **overrides: Any) -> Settings:
    """The settings; deprecation notes go to stderr."""
    settings, notes = load_with_notes(config_file, **overrides)
    print_notes(notes)
    return settings


def print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"sandbox: warning: {note}", file=sys.stderr)


def _notes(caught: list[warnings.WarningMessage]) -> list[str]:
    notes = []
    for warning in caught:
        if issubclass(warning.category, DeprecatedSettingWarning):
            notes.append(str(warning.message))
        else:  # not ours: show it as it would have been shown
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return notes
