"""`sandbox fidelity report`: the Monty/CPython mismatches shadow checking found
(sandbox/core/shadow.py), to grow the divergence table; `sandbox fidelity table`: the
divergences already known (sandbox/backends/monty/divergence.py), for upstream."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sandbox.cli.settings import load_printing_notes


def add_commands(sub: Any) -> None:
    fidelity = sub.add_parser("fidelity", help="where Monty answers differently from CPython")
    fsub = fidelity.add_subparsers(required=True, metavar="ACTION")
    report = fsub.add_parser(
        "report", help="the mismatches shadow checking found (the state directory's)"
    )
    report.add_argument("--config", type=Path, help="server settings (journal.state_dir)")
    report.add_argument("--state-dir", type=Path, help="the server's state directory")
    report.add_argument("--json", action="store_true", help="one JSON object a line")
    report.set_defaults(func=_report)
    table = fsub.add_parser("table", help="the known divergences, and how each is detected")
    table.add_argument("--json", action="store_true", help="one JSON object a line")
    table.set_defaults(func=_table)


def _report(args: argparse.Namespace) -> int:
    from sandbox.core.shadow import MISMATCHES_FILE, read_mismatches

    state_dir = args.state_dir or load_printing_notes(args.config).journal.state_dir
    path = Path(state_dir) / MISMATCHES_FILE
    found = list(read_mismatches(path))
    for mismatch in found:
        if args.json:
            print(json.dumps(asdict(mismatch), ensure_ascii=False))
            continue
        print(f"{mismatch.digest}  {mismatch.execution_id}  policy {mismatch.policy}")
        print(
            f"  Monty:   ok={mismatch.monty_ok} stdout={mismatch.monty_stdout!r}"
            f" result={mismatch.monty_result}"
        )
        print(
            f"  CPython: ok={mismatch.cpython_ok} stdout={mismatch.cpython_stdout!r}"
            f" result={mismatch.cpython_result} {mismatch.cpython_error}".rstrip()
        )
        print("  code: " + (repr(mismatch.code) if mismatch.code else "(digest only)"))
    print(f"{len(found)} mismatch(es) in {path}", file=sys.stderr)
    return 0


def _table(args: argparse.Namespace) -> int:
    from sandbox.backends.monty.divergence import TABLE

    for entry in TABLE:
        if args.json:
            print(json.dumps(asdict(entry)))
        else:
            print(
                f"{entry.id} ({entry.kind}; pydantic-monty {entry.monty_version}; "
                f"detected by {', '.join(entry.detection)})"
            )
            print(f"  {entry.construct}\n  Monty: {entry.monty}\n  CPython: {entry.cpython}")
    return 0
