"""`sandbox run --batch FILE.jsonl`: one request per line, over one Batch stream
(SandboxClient.map), one result per line in input order on stdout (proto JSON,
snake_case, as `run --json` prints, on one line each), a progress line on stderr when it
is a terminal, and exit status 0 only when every item ran to completion.

A line is a JSON object with `code` and any of `backend`, `policy`, `inputs`, `stdin`,
`limits` (an object of limit fields), `idempotency_key`, `session_id`. A line that is
not such an object is not sent: its result is INVALID_REQUEST naming the line, in its
place, so the output still has one line per input line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format
from pydantic import ValidationError

from sandbox.errors import ConfigError
from sandbox_client import ExecutionResult, Failure, FailureKind, Limits, SandboxClient
from sandbox_client.protocol.convert import result_to_proto

_FIELDS = frozenset(
    {"code", "backend", "policy", "inputs", "stdin", "limits", "idempotency_key", "session_id"}
)
# A progress line at most this often: redrawing it costs more than a short item.
_PROGRESS_EVERY_S = 0.2


def item_of(number: int, line: str) -> dict[str, Any] | Failure:
    """The batch item line `number` asks for, or why it cannot be sent."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return _bad(number, f"not JSON: {exc}")
    if not isinstance(value, dict):
        return _bad(number, "not a JSON object")
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        return _bad(number, f"unknown field {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})")
    if not isinstance(value.get("code"), str):
        return _bad(number, "`code` must be a string", field="code")
    if "inputs" in value and not isinstance(value["inputs"], dict):
        return _bad(number, "`inputs` must be a JSON object", field="inputs")
    if "limits" in value:
        if not isinstance(value["limits"], Mapping):
            return _bad(number, "`limits` must be a JSON object", field="limits")
        try:
            value["limits"] = Limits(**value["limits"])
        except (ValidationError, TypeError) as exc:
            return _bad(number, f"`limits`: {exc}".splitlines()[0], field="limits")
    for name in ("backend", "policy", "stdin", "idempotency_key", "session_id"):
        if name in value and not isinstance(value[name], str):
            return _bad(number, f"`{name}` must be a string", field=name)
    if value.get("backend", "auto") not in ("auto", "monty", "container"):
        return _bad(number, f"unknown backend {value['backend']!r}", field="backend")
    return value


def _bad(number: int, problem: str, field: str = "") -> Failure:
    details = {"line": str(number), **({"field": field} if field else {})}
    return Failure.of(FailureKind.INVALID_REQUEST, f"line {number}: {problem}", details=details)


def run_batch(
    client: SandboxClient, lines: list[tuple[int, str]], out: TextIO, progress: TextIO
) -> int:
    """Runs every line's item, prints the results in input order; the exit status."""
    parsed = [item_of(number, line) for number, line in lines]
    items = [p for p in parsed if not isinstance(p, Failure)]
    results: Iterator[ExecutionResult] = client.map(items)  # type: ignore[arg-type]
    meter = _Progress(len(parsed), progress if progress.isatty() else None)
    failed = 0
    for entry in parsed:
        result = ExecutionResult.failed(entry) if isinstance(entry, Failure) else next(results)
        failed += not result.ok
        out.write(json.dumps(_as_json(result), sort_keys=True) + "\n")
        meter.step(failed)
    meter.finish(failed)
    return 0 if failed == 0 else 1


def _as_json(result: ExecutionResult) -> dict[str, Any]:
    shown = json_format.MessageToDict(
        result_to_proto(result),
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    if result.fallback_from is None:
        del shown["fallback_from"]
    return shown


class _Progress:
    """`done N/M, F failed, R/s` redrawn on a terminal; nothing elsewhere."""

    def __init__(self, total: int, terminal: TextIO | None) -> None:
        self.total = total
        self.terminal = terminal
        self.done = 0
        self.started = self.shown = time.monotonic()

    def step(self, failed: int) -> None:
        self.done += 1
        now = time.monotonic()
        if self.terminal is not None and now - self.shown >= _PROGRESS_EVERY_S:
            self.shown = now
            self._draw(failed, now)

    def finish(self, failed: int) -> None:
        if self.terminal is not None:
            self._draw(failed, time.monotonic())
            self.terminal.write("\n")

    def _draw(self, failed: int, now: float) -> None:
        assert self.terminal is not None
        rate = self.done / max(now - self.started, 1e-9)
        self.terminal.write(f"\rdone {self.done}/{self.total}, {failed} failed, {rate:,.0f}/s ")
        self.terminal.flush()


def read_lines(path: str) -> list[tuple[int, str]]:
    """The non-blank lines of `path` (- for stdin), each with its 1-based number."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
