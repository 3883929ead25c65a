"""The reviewer and operator commands: `sandbox policy ...`, `sandbox audit ...`,
`sandbox tenant ...`. Thin: the logic lives in policy_files, policy_review, audit, tenants."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from sandbox.cli.settings import load_printing_notes
from sandbox.config import Settings
from sandbox_client import FailureKind

# What an audit record's `kind` can be: OK, or one of the taxonomy's kinds.
RECORD_KINDS = ("OK", *(kind.value for kind in FailureKind))


def existing_path(text: str) -> Path:
    """An argparse type: a path that exists (a one-line error and exit 2 otherwise)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
    return path


def iso_time(text: str) -> str:
    """An argparse type: an ISO 8601 time such as 2026-12-01 or 2026-12-01T10:00:00Z."""
    try:
        dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-12-01 or 2026-12-01T10:00:00Z)"
        ) from None
    return text


def add_commands(sub: Any) -> None:
    policy = sub.add_parser("policy", help="lint, show, diff and explain execution policies")
    psub = policy.add_subparsers(required=True, metavar="ACTION")
    lint = psub.add_parser("lint", help="check policy files; exit 1 on any error")
    lint.add_argument("files", nargs="+", type=Path, help="policy files or directories")
    lint.add_argument("--config", type=Path, help="server settings (for its maximums)")
    lint.set_defaults(func=_lint)
    for name, helptext, func in (
        ("show", "the effective policy (defaults filled in) and its digest", _show),
        ("explain", "what code under the policy may do, in plain English", _explain),
    ):
        p = psub.add_parser(name, help=helptext)
        p.add_argument("policy", help="a policy name, or a policy file")
        p.add_argument("--config", type=Path, help="server settings ([policies] dir)")
        p.add_argument("--dir", type=existing_path, help="policy directory (overrides --config)")
        p.set_defaults(func=func)
    diff = psub.add_parser("diff", help="what one policy permits that the other does not")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--config", type=Path, help="server settings ([policies] dir)")
    diff.add_argument("--dir", type=existing_path, help="policy directory (overrides --config)")
    diff.set_defaults(func=_diff)

    audit = sub.add_parser("audit", help="verify and query the audit log")
    asub = audit.add_subparsers(required=True, metavar="ACTION")
    verify = asub.add_parser(
        "verify", help="check the chain, its MACs and its anchor; exit 1 at the first problem"
    )
    verify.add_argument(
        "files", nargs="+", type=existing_path, help="audit files or the log directory"
    )
    verify.add_argument(
        "--key-file",
        type=Path,
        help="the audit key (the server's audit.key_file, by default journal.state_dir/"
        "audit.key): checks every record's MAC; without it only the hashes are checked",
    )
    verify.add_argument(
        "--anchor",
        type=Path,
        help="the head the writer keeps (its audit.anchor_file); default: DIR/anchor.json "
        "when a directory is given",
    )
    verify.add_argument(
        "--no-anchor", action="store_true", help="do not compare the log's end with an anchor"
    )
    verify.add_argument(
        "--start",
        metavar="SEQ:HASH",
        help="the last seq and hash before the oldest file given (older files archived, "
        "from an earlier verify's output)",
    )
    verify.set_defaults(func=_verify)
    query = asub.add_parser("query", help="print matching records as JSON lines")
    query.add_argument(
        "files", nargs="+", type=existing_path, help="audit files or the log directory"
    )
    query.add_argument("--tenant")
    query.add_argument(
        "--kind",
        type=str.upper,
        choices=RECORD_KINDS,
        metavar="KIND",
        help="OK, or a failure kind such as TIMEOUT or THROTTLED",
    )
    query.add_argument("--policy")
    query.add_argument(
        "--since", type=iso_time, help="ISO 8601 time, inclusive (UTC unless stated)"
    )
    query.add_argument("--until", type=iso_time, help="ISO 8601 time, exclusive")
    query.set_defaults(func=_query)

    tenant = sub.add_parser("tenant", help="tenant credentials")
    tsub = tenant.add_subparsers(required=True, metavar="ACTION")
    key = tsub.add_parser("new-key", help="print a new API key and the digest to store")
    key.set_defaults(func=_new_key)


def _settings(args: argparse.Namespace) -> Settings:
    # Loaded once per command, so a deprecated name is reported once.
    loaded: Settings | None = getattr(args, "_settings", None)
    if loaded is None:
        loaded = args._settings = load_printing_notes(getattr(args, "config", None))
    return loaded


def _policy_dir(args: argparse.Namespace) -> Path | None:
    if getattr(args, "dir", None) is not None:
        return Path(args.dir)
    return _settings(args).policies.dir


def _lint(args: argparse.Namespace) -> int:
    from sandbox.policy.files import lint_files

    problems = lint_files(args.files, _settings(args).policies.maximums)
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    print(f"{errors} error(s), {warnings} warning(s)", file=sys.stderr)
    return 1 if errors else 0


def _find(args: argparse.Namespace, name: str) -> Any:
    from sandbox.policy.review import ReviewError, find_policy

    try:
        return find_policy(name, _policy_dir(args), _settings(args).policies.maximums)
    except ReviewError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _show(args: argparse.Namespace) -> int:
    from sandbox.policy.review import show

    print(show(_find(args, args.policy)), end="")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from sandbox.policy.review import explain

    print(explain(_find(args, args.policy)), end="")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from sandbox.policy.review import diff

    text, same = diff(_find(args, args.a), _find(args, args.b))
    print(text, end="")
    return 0 if same else 1


def _verify(args: argparse.Namespace) -> int:
    from sandbox.audit.log import parse_start, read_key, verify
    from sandbox.errors import ConfigError

    try:
        key = read_key(args.key_file) if args.key_file else None
        start = parse_start(args.start) if args.start else None
    except (OSError, ValueError, ConfigError) as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    report = verify(
        args.files, key=key, anchor=args.anchor, start=start, check_anchor=not args.no_anchor
    )
    elapsed = time.perf_counter() - started
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not report.ok:
        print(f"FAILED after {report.records} good record(s): {report.error}")
        return 1
    macs = "MACs checked" if report.macs_checked else "MACs NOT checked (no --key-file)"
    anchor = f"anchor at seq {report.anchor_seq}" if report.anchor_seq is not None else "no anchor"
    print(
        f"OK: {report.records} record(s) in {report.files} file(s), seq "
        f"{report.first_seq}..{report.last_seq}, last hash {report.last_hash}; {macs}; "
        f"{anchor} ({elapsed:.2f} s)"
    )
    print(f"what follows starts after: {report.head_seq}:{report.last_hash}")
    return 0


def _query(args: argparse.Namespace) -> int:
    from sandbox.audit.log import expand, query

    if not expand(args.files):
        print(f"sandbox: no audit files (audit-NNNNNN.jsonl) in {args.files[0]}", file=sys.stderr)
        return 2
    skipped: dict[Path, int] = {}

    def unreadable(path: Path, line: int) -> None:
        skipped[path] = skipped.get(path, 0) + 1

    for record in query(
        args.files,
        tenant=args.tenant,
        kind=args.kind,
        policy=args.policy,
        since=args.since,
        until=args.until,
        unreadable=unreadable,
    ):
        print(json.dumps(record, sort_keys=True))
    for path, count in skipped.items():
        print(f"warning: {path}: {count} line(s) are not audit records", file=sys.stderr)
    return 1 if skipped else 0


def _new_key(args: argparse.Namespace) -> int:
    from sandbox.access.tenants import new_api_key

    key, digest = new_api_key()
    print(f"key:    {key}   (give this to the tenant; it is not stored)")
    print(f"digest: {digest}   (put this in api_key_sha256)")
    return 0
