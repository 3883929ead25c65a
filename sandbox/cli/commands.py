"""The `sandbox` command: serve, run, doctor; policy, audit and tenant (cli_admin)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog
from google.protobuf import json_format

from sandbox.cli.admin import add_commands as add_admin_commands
from sandbox.cli.fidelity import add_commands as add_fidelity_commands
from sandbox.cli.mcp import add_command as add_mcp_command
from sandbox.cli.settings import API_KEY_VARIABLE, load_printing_notes, load_with_notes
from sandbox.config import Settings
from sandbox.core.request import Request
from sandbox.errors import ConfigError, RequestError
from sandbox.logs import configure_logging
from sandbox_client import Backend, ExecutionResult, Failure, Limits, SandboxClient
from sandbox_client.protocol.convert import NO_LIMITS_ASKED, result_to_proto
from sandbox_client.protocol.models import LIMIT_FIELDS

log = structlog.get_logger("sandbox.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # The reader went away (`sandbox run --json | head`): nothing more to say to it.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    # Collect Monty's pool objects now: finalizing them during interpreter shutdown can
    # abort the process and turn a clean exit status into 134.
    gc.collect()
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandbox", description="Run agent-written code in Monty or a container."
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {importlib.metadata.version('sandbox')}"
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gRPC service")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 50051; 0 picks a free one)")
    serve.add_argument("--config", type=Path, help="TOML settings file")
    serve.add_argument(
        "--containers",
        choices=("on", "off", "auto"),
        help="serve the container backend: on, off, or auto (on when a Docker engine "
        "answers and the runner image is there); overrides [container] enabled",
    )
    serve.set_defaults(func=_serve)

    run = sub.add_parser("run", help="run code once and print the result")
    run.add_argument("file", nargs="?", default="-", help="a Python file, or - for stdin")
    run.add_argument("--backend", choices=[b.value for b in Backend], default="auto")
    run.add_argument("--policy", default="", help="policy name (default: the server's)")
    run.add_argument("--server", help="ADDR of a running server; default: run in-process")
    run.add_argument("--inputs-json", default="", help="a JSON object bound as variables")
    run.add_argument("--json", action="store_true", help="print the whole result as JSON")
    run.add_argument(
        "--batch",
        metavar="FILE.jsonl",
        help="run one request per line (- for stdin) over one Batch stream; print one JSON "
        "result per line, in input order; exit 0 only if every item succeeded",
    )
    run.add_argument("--config", type=Path, help="TOML settings file (in-process runs)")
    run.add_argument(
        "--stdin", default="", help="what the code reads from stdin (input()); @FILE reads a file"
    )
    run.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE, ""),
        help=f"API key for --server (default: ${API_KEY_VARIABLE})",
    )
    for name in LIMIT_FIELDS:  # --wall-time-ms, --memory-bytes, ...: lower than the policy's
        run.add_argument(f"--{name.replace('_', '-')}", type=_non_negative, dest=name)
    run.set_defaults(func=_run)

    doctor = sub.add_parser("doctor", help="say what works on this machine")
    doctor.add_argument("--config", type=Path, help="TOML settings file")
    doctor.set_defaults(func=_doctor)

    add_mcp_command(sub)
    add_admin_commands(sub)
    add_fidelity_commands(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from sandbox.app import SandboxServer, new_event_loop

    server_overrides: dict[str, Any] = {}
    if args.host is not None:
        server_overrides["host"] = args.host
    if args.port is not None:
        server_overrides["port"] = args.port
    sections: dict[str, Any] = {"server": server_overrides}
    if args.containers is not None:
        enabled = {"on": True, "off": False, "auto": "auto"}[args.containers]
        sections["container"] = {"enabled": enabled}
    settings, notes = load_with_notes(args.config, **sections)
    configure_logging(settings.log)
    for note in notes:
        log.warning("deprecated setting name", detail=note)
    server = SandboxServer(settings)
    loop = settings.server.event_loop
    with asyncio.Runner(loop_factory=lambda: new_event_loop(loop)) as runner:
        runner.run(server.serve_forever())
    return 0


def _read_code(file: str) -> str:
    if file == "-":
        return sys.stdin.read()
    try:
        return Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {file}: {exc}") from None


def _display_name(file: str) -> str:
    """What tracebacks call the code: the path given, as python's own would (its last
    part if the path is too long for the wire's 255 characters), or <stdin>."""
    if file == "-":
        return "<stdin>"
    shown = file if len(file) <= 255 else Path(file).name[-255:]
    return shown if shown.isprintable() else "<code>"


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _run(args: argparse.Namespace) -> int:
    if args.batch is not None:
        return _run_batch(args)
    code = _read_code(args.file)
    filename = _display_name(args.file)
    stdin = _read_code(args.stdin[1:]) if args.stdin.startswith("@") else args.stdin
    asked = {name: getattr(args, name) for name in LIMIT_FIELDS if getattr(args, name) is not None}
    limits = Limits(**asked) if asked else None
    if args.inputs_json:
        try:
            inputs = json.loads(args.inputs_json)
        except ValueError as exc:
            raise ConfigError(f"--inputs-json is not JSON: {exc}") from None
        if not isinstance(inputs, dict):
            raise ConfigError("--inputs-json must be a JSON object")
    else:
        inputs = {}
    if args.server:
        with SandboxClient(args.server, api_key=args.api_key or None) as client:
            result = client.execute(
                code,
                backend=args.backend,
                policy=args.policy,
                inputs=inputs,
                stdin=stdin,
                limits=limits,
                filename=filename,
            )
    else:
        # One run: one Monty worker, no warm containers (filling the pool cost more than
        # the run: 4.4 s against 2.7 s for print(1)), and no idempotency key, so no
        # journal (a server that owns it may be up). A running server has all of these
        # warm: through --server the same run takes milliseconds.
        settings = load_printing_notes(
            args.config,
            monty={"min_workers": 1},
            container={"pool_size": 0},
            journal={"enabled": False},
        )
        configure_logging(settings.log.model_copy(update={"level": "warning"}))
        request = Request(
            code=code,
            backend=Backend(args.backend),
            policy=args.policy,
            inputs=inputs,
            stdin=stdin,
            limits=limits or NO_LIMITS_ASKED,
            filename=filename,
        )
        result = asyncio.run(_run_in_process(settings, request))
    _print_result(result, as_json=args.json)
    return exit_status(result)


def exit_status(result: ExecutionResult) -> int:
    """0 for success; the code's own status when it ended itself with sys.exit(n), as
    `python file.py` would; 1 for any other failure."""
    failure = result.failure
    if failure is None:
        return 0
    status = failure.details.get("exit_code", "")
    if failure.exception_type == "SystemExit" and status.isdigit() and 0 < int(status) < 256:
        return int(status)
    return 1


def _run_batch(args: argparse.Namespace) -> int:
    from sandbox.cli.batch import read_lines, run_batch

    lines = read_lines(args.batch)
    if args.server:
        with SandboxClient(args.server, api_key=args.api_key or None) as client:
            return run_batch(client, lines, sys.stdout, sys.stderr)
    # Its own loopback server, without a journal: the user's state directory belongs to
    # `sandbox serve` (one process per journal file), and no other call shares this one.
    settings = load_printing_notes(
        args.config,
        monty={"min_workers": 1},
        server={"host": "127.0.0.1", "port": 0},
        journal={"enabled": False},
    )
    configure_logging(settings.log.model_copy(update={"level": "warning"}))
    with _local_server(settings) as address, SandboxClient(address) as client:
        return run_batch(client, lines, sys.stdout, sys.stderr)


@contextlib.contextmanager
def _local_server(settings: Settings) -> Iterator[str]:
    """A server on a loopback port of its own, on a thread, for an in-process batch."""
    from sandbox.app import SandboxServer, new_event_loop

    server = SandboxServer(settings)
    loop = new_event_loop(settings.server.event_loop)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


async def _run_in_process(settings: Settings, request: Request) -> ExecutionResult:
    from sandbox.app import build_executor
    from sandbox.core.executor import Trace

    executor = build_executor(settings)
    for backend in executor.backends.values():
        await backend.start()
    try:
        return await executor.execute(request, Trace())
    except RequestError as exc:
        failure = Failure.of(
            exc.kind, exc.message, retry_after_ms=exc.retry_after_ms, details=exc.error_info
        )
        return ExecutionResult.failed(failure)
    finally:
        for backend in executor.backends.values():
            await backend.stop()


def _print_result(result: ExecutionResult, *, as_json: bool) -> None:
    if as_json:
        shown = json_format.MessageToDict(
            result_to_proto(result),
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        if result.fallback_from is None:
            del shown["fallback_from"]  # nothing fell back: not BACKEND_UNSPECIFIED
        print(json.dumps(shown, indent=2, sort_keys=True))
        return
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.result_json is not None:
        print(result.result_json)
    if result.failure is not None:
        failure = result.failure
        print(f"{failure.kind.value}: {failure.message}", file=sys.stderr)


def _doctor(args: argparse.Namespace) -> int:
    from sandbox.cli.doctor import run_checks

    settings = load_printing_notes(args.config, monty={"min_workers": 1})
    checks = asyncio.run(run_checks(settings))
    for check in checks:
        # FAIL: required and broken (exit 1); --: a part this machine goes without.
        mark = "ok  " if check.ok else ("FAIL" if check.required else "--  ")
        print(f"{mark} {check.name}: {check.detail}")
    return 0 if all(c.ok for c in checks if c.required) else 1


if __name__ == "__main__":
    sys.exit(main())
