"""Reading the shared corpora (never copied into the repo) and reporting on them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import CORPORA, IN_CI

REPORTS: list[str] = []


def read_jsonl(relative: str) -> list[dict[str, Any]]:
    path = CORPORA / relative
    if not path.exists():
        if IN_CI:
            pytest.fail(
                f"corpus {path} is missing: CI needs ../shared beside the repo or SANDBOX_CORPORA"
            )
        pytest.skip(
            f"corpus {path} is not present (lay ../shared beside the repo or set SANDBOX_CORPORA)"
        )
    return [json.loads(line) for line in _lines(path)]


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        yield from (line for line in handle if line.strip())


def report(line: str) -> None:
    """Adds a line to the corpus summary printed at the end of the test run."""
    REPORTS.append(line)
