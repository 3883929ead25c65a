"""The `sandbox` command, run as a user would: a real process, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from tests.conftest import ServerThread

SANDBOX = [sys.executable, "-m", "sandbox"]


def sandbox(*args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDBOX_MONTY__MIN_WORKERS": "1"}
    return subprocess.run(
        [*SANDBOX, *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=env
    )


@contextmanager
def serving(config: Path, text: str) -> Iterator[tuple[subprocess.Popen[str], IO[str]]]:
    """`sandbox serve` with `text` as its config file: the process and its log (stderr);
    killed on the way out, whatever the test did with it."""
    config.write_text(text)
    proc = subprocess.Popen(
        [*SANDBOX, "serve", "--config", str(config)], stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        yield proc, proc.stderr
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_run_success_exits_zero_and_prints_output(tmp_path: Path) -> None:
    script = tmp_path / "ok.py"
    script.write_text("print('hello')\n6 * 7\n")
    done = sandbox("run", str(script), "--backend", "monty")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello\n42\n"


def test_run_failure_exits_one_and_names_the_kind() -> None:
    done = sandbox("run", "-", stdin="x = [0] * 10**9\n")
    assert done.returncode == 1
    assert "MEMORY_LIMIT" in done.stderr and "line 1" in done.stderr


def test_run_json_is_proto_json_with_snake_case_fields() -> None:
    done = sandbox("run", "-", "--json", stdin="1/0\n")
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["ok"] is False
    assert result["failure"]["kind"] == "RUNTIME_ERROR"
    assert result["failure"]["exception_type"] == "ZeroDivisionError"
    assert result["failure"]["frames"][-1]["line"] == 1
    assert "execution_id" in result and "policy_digest" in result


def test_run_against_a_server(server: ServerThread) -> None:
    done = sandbox("run", "-", "--server", server.address, "--json", stdin="print(3)\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stdout"] == "3\n"


def test_run_against_no_server_is_infra_unavailable() -> None:
    done = sandbox("run", "-", "--server", "127.0.0.1:1", "--json", stdin="1\n")
    assert done.returncode == 1
    assert json.loads(done.stdout)["failure"]["kind"] == "INFRA_UNAVAILABLE"


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["run", "/no/such/file.py"], "", "cannot read"),
        (["run", "-", "--inputs-json", "{nope"], "1", "--inputs-json"),
        (["run", "-", "--inputs-json", "[1]"], "1", "JSON object"),
        (["run", "-", "--backend", "cloud"], "1", "invalid choice"),
        (["serve", "--host", "0.0.0.0", "--port", "0"], "", "loopback"),
        (["serve", "--port", "99999"], "", "port"),
        (["frobnicate"], "", "invalid choice"),
        (["serve", "--containers", "maybe"], "", "invalid choice: 'maybe'"),
    ],
)
def test_bad_arguments_exit_two_with_a_clear_message(
    args: list[str], stdin: str, message: str
) -> None:
    done = sandbox(*args, stdin=stdin)
    assert done.returncode == 2
    assert message in done.stderr


def test_run_empty_code_is_invalid_request() -> None:
    done = sandbox("run", "-", "--json", stdin="")
    assert done.returncode == 1
    assert json.loads(done.stdout)["failure"]["kind"] == "INVALID_REQUEST"


def test_bad_config_file_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("port = [not toml")
    done = sandbox("serve", "--config", str(broken))
    assert done.returncode == 2 and "broken.toml" in done.stderr and "TOML" in done.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[server]\nprot = 5\n")
    done = sandbox("serve", "--config", str(unknown))
    assert done.returncode == 2 and "unknown.toml" in done.stderr and "server.prot" in done.stderr
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text("[sessions]\nmax_open = 'many'\n")
    done = sandbox("serve", "--config", str(wrong_type))
    assert done.returncode == 2 and "sessions.max_open" in done.stderr
    assert "Traceback" not in done.stderr


def test_doctor_reports_monty() -> None:
    done = sandbox("doctor")
    assert "monty: 1 + 1 = 2" in done.stdout
    assert "docker engine" in done.stdout
    assert done.returncode == 0


def test_serve_answers_health_checks_and_stops_on_sigterm(tmp_path: Path) -> None:
    import signal
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    config = "[server]\nport = 0\n[log]\nformat = 'json'\n[monty]\nmin_workers = 1\n"
    with serving(tmp_path / "sandbox.toml", config) as (proc, log):
        line = log.readline()
        address = json.loads(line)["address"]
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 20


def test_serve_logs_old_setting_names_and_serves(tmp_path: Path) -> None:
    """The flat names of 0.2 still work for a release; the log (JSON here) names the new
    spelling of each, and the server starts with the values they gave."""
    import signal

    config = "port = 0\nlog_format = 'json'\nmonty_min_workers = 1\n"
    with serving(tmp_path / "old.toml", config) as (proc, log):
        events = []
        for line in log:
            events.append(json.loads(line))  # every line JSON, the warnings too
            if "address" in events[-1]:
                break
        notes = [e["detail"] for e in events if e["event"] == "deprecated setting name"]
        assert any("`port` is deprecated; use `port` under [server]" in n for n in notes)
        assert any("`min_workers` under [monty]" in n for n in notes), notes
        assert not events[-1]["address"].endswith(":50051")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_old_environment_names_warn_on_stderr(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "tight.toml").write_text("wall_time_ms = 500\n")
    env = {**os.environ, "SANDBOX_POLICY_DIR": str(policies)}
    done = subprocess.run(
        [*SANDBOX, "policy", "show", "tight"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "wall_time_ms = 500" in done.stdout
    assert "SANDBOX_POLICY_DIR is deprecated; use SANDBOX_POLICIES__DIR" in done.stderr
    assert done.stderr.count("deprecated") == 1  # once per command, however often it reads


# -- the first hour: what a new user reaches for ------------------------------------------


def test_version() -> None:
    done = sandbox("--version")
    assert done.returncode == 0 and done.stdout.startswith("sandbox ")


def test_stdin_and_limits_reach_the_code(tmp_path: Path) -> None:
    answers = tmp_path / "answers.txt"
    answers.write_text("from a file\n")
    code = "print(input())\n"
    assert sandbox("run", "-", "--stdin", "typed", stdin=code).stdout == "typed\n"
    assert sandbox("run", "-", "--stdin", f"@{answers}", stdin=code).stdout == "from a file\n"
    slow = sandbox("run", "-", "--json", "--wall-time-ms", "300", stdin="while True:\n    pass\n")
    failure = json.loads(slow.stdout)["failure"]
    assert failure["kind"] == "TIMEOUT"


@pytest.mark.parametrize(
    "args",
    [["--memory-bytes", "-1"], ["--pids", "many"], ["--backend", "gpu"], ["--nope"]],
)
def test_bad_run_arguments_exit_two_with_one_line(args: list[str]) -> None:
    done = sandbox("run", "-", *args, stdin="1\n")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sandbox") and " error: " in last


def test_json_into_a_closed_pipe_ends_quietly() -> None:
    proc = subprocess.Popen(
        [*SANDBOX, "run", "-", "--json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write("print('x' * 200_000)\n")
    proc.stdin.close()
    proc.stdout.read(10)
    proc.stdout.close()  # as `| head -c 10` does
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in proc.stderr.read()


def test_json_leaves_out_a_fallback_that_did_not_happen_and_sorts_keys() -> None:
    done = sandbox("run", "-", "--json", "--backend", "monty", stdin="1\n")
    shown = json.loads(done.stdout)
    assert "fallback_from" not in shown
    assert list(shown) == sorted(shown)


def test_run_against_a_server_with_an_api_key(tmp_path: Path) -> None:
    from sandbox.access.tenants import new_api_key
    from tests.conftest import running_server

    key, digest = new_api_key()
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants.cli]\napi_key_sha256 = ["{digest}"]\n')
    with running_server(tenants={"file": tenants}) as srv:
        refused = sandbox("run", "-", "--server", srv.address, "--json", stdin="print(1)\n")
        by_flag = sandbox("run", "-", "--server", srv.address, "--api-key", key, stdin="print(1)\n")
        env = {**os.environ, "SANDBOX_API_KEY": key}
        by_env = subprocess.run(
            [*SANDBOX, "run", "-", "--server", srv.address],
            input="print(2)\n",
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert json.loads(refused.stdout)["failure"]["kind"] == "INVALID_REQUEST"
    assert by_flag.returncode == 0 and by_flag.stdout == "1\n", by_flag.stderr
    assert by_env.returncode == 0 and by_env.stdout == "2\n", by_env.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, name: str, port: int, **server: str) -> Path:
    extra = "".join(f"{key} = {value}\n" for key, value in server.items())
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"[server]\nport = {port}\n{extra}[journal]\nstate_dir = '{tmp_path / name}'\n"
        "[log]\nformat = 'json'\n[monty]\nmin_workers = 1\n"
    )
    return path


def test_a_second_server_on_a_port_in_use_fails_to_start(
    tmp_path: Path, server: ServerThread
) -> None:
    port = server.address.rsplit(":", 1)[1]
    done = sandbox("serve", "--config", str(_config(tmp_path, "second", int(port))))
    assert done.returncode == 2, done.stderr
    assert f"sandbox: cannot listen on 127.0.0.1:{port}: the address is in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_port_sharing_is_a_setting_asked_for_on_purpose(tmp_path: Path) -> None:
    port = _free_port()
    first = _config(tmp_path, "a", port, reuse_port="true")
    with serving(first, first.read_text()) as (_, log_a):
        assert json.loads(log_a.readline())["event"] == "serving"
        second = _config(tmp_path, "b", port, reuse_port="true")
        with serving(second, second.read_text()) as (_, log_b):
            line = json.loads(log_b.readline())
            assert line["event"] == "serving" and line["address"].endswith(f":{port}")


def test_a_second_server_on_the_same_journal_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, "one", 0)
    with serving(config, config.read_text()) as (proc, log):
        assert json.loads(log.readline())["event"] == "serving"
        done = sandbox("serve", "--config", str(config))
    assert done.returncode == 2, done.stderr
    journal = tmp_path / "one" / "journal.sqlite3"
    assert f"sandbox: the journal {journal} is in use by process {proc.pid}" in done.stderr


def test_an_in_process_run_beside_a_server_on_the_same_state_dir(tmp_path: Path) -> None:
    config = _config(tmp_path, "shared", 0)
    with serving(config, config.read_text()) as (_, log):
        assert json.loads(log.readline())["event"] == "serving"
        done = sandbox("run", "-", "--config", str(config), stdin="print(6 * 7)")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "42\n"


def test_the_containers_example_config_knows_the_repositorys_policies() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [*SANDBOX, "policy", "show", "data-analysis", "--config", "examples/containers.toml"],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert 'name = "data-analysis"' in done.stdout
    assert 'container_image = "sandbox-runner-datascience:latest"' in done.stdout


@pytest.mark.docker
def test_sys_exit_in_a_container_is_the_commands_exit_status(tmp_path: Path) -> None:
    from tests.conftest import docker_problem, require

    require(docker_problem("sandbox-runner:latest"))
    script = tmp_path / "leave.py"
    script.write_text("import sys\nprint('a')\nsys.exit(3)\n")
    config = tmp_path / "c.toml"
    config.write_text("[container]\nenabled = true\npool_size = 1\nscope = 'test-cli-exit'\n")
    done = sandbox("run", str(script), "--backend", "container", "--config", str(config))
    assert done.returncode == 3, done.stderr
    assert done.stdout == "a\n"
    assert "SystemExit: exit status 3 (line 3: sys.exit(3))" in done.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["audit", "query", "{log}", "--since", "yesterday"], "not an ISO 8601 time"),
        (["audit", "query", "{log}", "--until", "2026-13-45"], "not an ISO 8601 time"),
        (["audit", "query", "{log}", "--kind", "BOGUS"], "invalid choice: 'BOGUS'"),
        (["audit", "query", "/nonexistent"], "no such file or directory"),
        (["audit", "query", "{empty}"], "no audit files"),
        (["audit", "verify", "/nonexistent"], "no such file or directory"),
        (["audit", "verify", "{log}", "--start", "garbage"], "expected SEQ:HASH"),
        (["policy", "show", "default", "--dir", "/nonexistent"], "no such file or directory"),
        (["policy", "show", "nosuch"], "no policy named 'nosuch'"),
        (["doctor", "--config", "/nonexistent"], "cannot read"),
    ],
)
def test_bad_admin_arguments_exit_two_with_one_line(
    tmp_path: Path, args: list[str], said: str
) -> None:
    log, empty = tmp_path / "log", tmp_path / "empty"
    log.mkdir()
    empty.mkdir()
    (log / "audit-000001.jsonl").write_text('{"kind": "OK", "tenant": "t"}\n')
    done = sandbox(*(a.format(log=log, empty=empty) for a in args))
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sandbox") and said in last, done.stderr


def test_audit_query_kind_is_case_blind_and_says_what_it_skipped(tmp_path: Path) -> None:
    log = tmp_path / "audit-000001.jsonl"
    log.write_text('{"kind": "TIMEOUT", "n": 1}\nnot a record\n{"kind": "OK", "n": 2}\n')
    done = sandbox("audit", "query", str(log), "--kind", "timeout")
    assert [json.loads(line)["n"] for line in done.stdout.splitlines()] == [1]
    assert done.returncode == 1
    assert f"warning: {log}: 1 line(s) are not audit records" in done.stderr


def _serving_backends(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Starts `sandbox serve --port 0 ARGS` and returns its log up to "serving"."""
    config = _config(tmp_path, "auto", 0)
    proc = subprocess.Popen(
        [*SANDBOX, "serve", "--config", str(config), *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    seen: dict[str, Any] = {}
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            record = json.loads(line)
            seen[record["event"]] = record
            if record["event"] == "serving":
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    return seen


def test_containers_auto_without_an_engine_serves_monty_and_says_why(tmp_path: Path) -> None:
    seen = _serving_backends(
        tmp_path, "--containers", "auto", env={"DOCKER_HOST": "unix:///nonexistent.sock"}
    )
    assert seen["serving"]["backends"] == ["monty"]
    assert "no Docker engine answers" in seen["container backend off (auto)"]["reason"]


@pytest.mark.docker
def test_containers_auto_with_an_engine_and_the_image_serves_them(tmp_path: Path) -> None:
    from tests.conftest import docker_problem, require

    require(docker_problem("sandbox-runner:latest"))
    seen = _serving_backends(tmp_path, "--containers", "auto")
    assert seen["serving"]["backends"] == ["container", "monty"]
    assert "container backend on (auto): the engine answers" in seen


def test_doctor_checks_the_configuration_it_is_given(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "broken.toml").write_text('wall_time_ms = "fast"\n')
    (policies / "ds.toml").write_text('container_image = "no-such-image:latest"\n')
    (tmp_path / "tenants.toml").write_text("[tenants.t]\nmax_concurrent = -1\n")
    config = tmp_path / "c.toml"
    config.write_text(
        f"[policies]\ndir = '{policies}'\n[tenants]\nfile = '{tmp_path / 'tenants.toml'}'\n"
        f"[journal]\nstate_dir = '{tmp_path / 'state'}'\n[audit]\ndir = '{tmp_path / 'log'}'\n"
        "[container]\ndocker_host = 'unix:///nonexistent.sock'\n"
    )
    done = sandbox("doctor", "--config", str(config))
    lines = {line.split(":")[0]: line for line in done.stdout.splitlines()}
    assert lines["FAIL policies"].endswith(
        "broken.toml:1: wall_time_ms: Input should be a valid "
        "integer, unable to parse string as an integer (got 'fast')"
    ), lines
    assert lines["FAIL tenants"].startswith("FAIL tenants: "), lines
    assert lines["ok   journal"] == f"ok   journal: {tmp_path / 'state'}"
    assert lines["ok   audit log"] == f"ok   audit log: {tmp_path / 'log'}"
    assert done.returncode == 1


@pytest.mark.docker
def test_doctor_names_each_image_the_policies_need(tmp_path: Path) -> None:
    from tests.conftest import docker_problem, require

    require(docker_problem("sandbox-runner:latest"))
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "ds.toml").write_text('container_image = "no-such-image:latest"\n')
    config = tmp_path / "c.toml"
    config.write_text(f"[policies]\ndir = '{policies}'\n[journal]\nstate_dir = '{tmp_path}'\n")
    done = sandbox("doctor", "--config", str(config), timeout=180)
    assert "--   image no-such-image:latest: missing: run `make image` (used by ds)" in done.stdout
    assert "ok   image sandbox-runner:latest: present (used by the server's default)" in done.stdout
