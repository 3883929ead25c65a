"""`sandbox run --batch FILE.jsonl`: one JSON result per input line, in input order;
bad lines answered in place; progress on a terminal only; exit status."""

from __future__ import annotations

import io
import json
from pathlib import Path

from sandbox.cli.batch import run_batch
from sandbox_client import SandboxClient
from tests.cli.test_cli import sandbox
from tests.conftest import ServerThread

LINES = [
    {"code": "1 + 1"},
    {"code": "1 / 0"},
    {"code": "x * 2", "inputs": {"x": 21}},
    {"code": "print(input())", "stdin": "typed"},
    {"code": "while True:\n    pass", "limits": {"wall_time_ms": 200}},
]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_results_come_in_input_order_one_line_each(tmp_path: Path, server: ServerThread) -> None:
    raw = [json.dumps(line) for line in LINES]
    raw.insert(2, "")  # blank lines are skipped
    raw.insert(3, "{not json")
    path = write(tmp_path, raw)
    done = sandbox("run", "--batch", str(path), "--server", server.address)
    assert done.returncode == 1, done.stderr  # not every item succeeded
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == 6
    first, zero_div, bad, inputs, stdin, spin = results
    assert first["ok"] and first["result_json"] == "2"
    assert zero_div["failure"]["kind"] == "RUNTIME_ERROR"
    assert bad["failure"]["kind"] == "INVALID_REQUEST"
    assert bad["failure"]["details"] == {"line": "4"}
    assert inputs["result_json"] == "42"
    assert stdin["stdout"] == "typed\n"
    assert spin["failure"]["kind"] == "TIMEOUT"
    # Not a terminal: no progress line.
    assert "done " not in done.stderr


def test_exit_zero_when_every_item_succeeds_in_process(tmp_path: Path) -> None:
    path = write(tmp_path, [json.dumps({"code": f"{i} * 3"}) for i in range(20)])
    done = sandbox("run", "--batch", str(path))
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["result_json"] for line in done.stdout.splitlines()] == [
        str(i * 3) for i in range(20)
    ]


def test_bad_lines_name_the_line_and_the_field(server: ServerThread) -> None:
    lines = [
        (1, '{"code": 5}'),
        (2, '{"code": "1", "backend": "gpu"}'),
        (3, '{"code": "1", "limits": {"wall_time_ms": -1}}'),
        (4, '{"code": "1", "colour": "red"}'),
        (5, "[1, 2]"),
    ]
    out = io.StringIO()
    with SandboxClient(server.address) as client:
        assert run_batch(client, lines, out, io.StringIO()) == 1
    failures = [json.loads(line)["failure"] for line in out.getvalue().splitlines()]
    assert [f["kind"] for f in failures] == ["INVALID_REQUEST"] * 5
    assert [f["details"].get("field") for f in failures] == [
        "code",
        "backend",
        "limits",
        None,
        None,
    ]
    assert [f["details"]["line"] for f in failures] == ["1", "2", "3", "4", "5"]


def test_progress_on_a_terminal_counts_done_and_failed(server: ServerThread) -> None:
    lines = [(n, json.dumps({"code": "1 / 0" if n % 4 == 0 else "1"})) for n in range(1, 41)]
    terminal = Terminal()
    with SandboxClient(server.address) as client:
        run_batch(client, lines, io.StringIO(), terminal)
    last = terminal.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith("done 40/40, 10 failed, ")
    assert last.rstrip().endswith("/s")
