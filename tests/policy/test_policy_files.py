"""Policy files and the reviewer CLI: one test per lint error, each naming file, line and
field; show, diff, explain; the shipped example policies lint clean."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sandbox.cli.commands import main
from sandbox.policy.files import lint_files, load_policy_dir, load_policy_file
from sandbox.policy.model import Policy, ServerMaximums
from sandbox.policy.review import diff, explain, show
from tests.conftest import REPO


def write(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def errors_of(path: Path, maximums: ServerMaximums | None = None) -> list[str]:
    return [str(p) for p in lint_files([path], maximums) if p.severity == "error"]


def test_example_policies_lint_clean() -> None:
    problems = lint_files([REPO / "policies"])
    assert [p for p in problems if p.severity == "error"] == []
    policies, _ = load_policy_dir(REPO / "policies")
    assert {"default", "pure-compute", "data-analysis"} <= set(policies)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # TOML syntax: the line tomllib reports.
        ("wall_time_ms = 100\nmemory_bytes = = 3\n", ":2: not valid TOML"),
        # Unknown key, on its own line.
        ("wall_time_ms = 100\nnetwork_access = true\n", ":2: network_access: unknown key"),
        # Wrong type.
        ('wall_time_ms = "fast"\n', ":1: wall_time_ms: Input should be a valid integer"),
        # Out of range.
        ("memory_bytes = -1\n", ":1: memory_bytes: Input should be greater than 0"),
        # Network other than none.
        ('# a\n# b\nnetwork = "host"\n', ":3: network: Input should be 'none'"),
        # Unknown backend.
        ('backends = ["monty", "vm"]\n', ":1: backends.1: Input should be"),
        # Name differs from the file.
        ('name = "other"\n', ":1: name: 'other' differs from the file name"),
        # Above the server maximum.
        ("wall_time_ms = 999_999_999\n", ":1: wall_time_ms: 999999999 is above the server maximum"),
        # No backend at all.
        ("backends = []\n", ":1: backends: no backend is allowed"),
        # auto without monty.
        ('backends = ["auto", "container"]\n', ":1: backends: 'auto' runs Monty first"),
        # Nobody may use it.
        ("tenants = []\n", ":1: tenants: empty: no tenant could use this policy"),
        # A read-write mount of a host system path.
        (
            'wall_time_ms = 100\n\n[[mounts]]\nhost_path = "/etc"\nguest_path = "/data"\n'
            'mode = "rw"\n',
            ":6: mounts.0.mode: read-write mount of the host system path '/etc'",
        ),
        # "/" contains every system path.
        (
            '[[mounts]]\nhost_path = "/srv/ok"\nguest_path = "/a"\n\n[[mounts]]\n'
            'host_path = "/"\nguest_path = "/b"\nmode = "rw"\n',
            ":8: mounts.1.mode: read-write mount of the host system path '/'",
        ),
        # A relative host path.
        (
            '[[mounts]]\nhost_path = "data/../x"\nguest_path = "/a"\n',
            ":2: mounts.0.host_path: 'data/../x' must be absolute",
        ),
        # A mount key that does not exist.
        (
            '[[mounts]]\nhost_path = "/srv/a"\nguest_path = "/a"\nwritable = true\n',
            ":4: mounts.0.writable: unknown key",
        ),
        # A mount missing a required key: the table's header line.
        ('[[mounts]]\nguest_path = "/a"\n', ":1: mounts.0.host_path: required key is missing"),
        # A bad policy name.
        ('name = "a b"\n', "name: Value error, a policy name is letters"),
        # Unknown runtime.
        ('container_runtime = "kata"\n', ":1: container_runtime: Input should be"),
    ],
)
def test_each_lint_error_names_file_line_and_field(
    tmp_path: Path, body: str, expected: str
) -> None:
    path = write(tmp_path, "p", body)
    errors = errors_of(path)
    assert errors, f"no error for {body!r}"
    assert any(e.startswith(str(path)) and expected in e for e in errors), errors
    assert load_policy_file(path).policy is None


def test_one_lint_reports_type_and_semantic_errors_together_by_line(tmp_path: Path) -> None:
    body = (
        'wall_time_ms = "fast"\n'  # a type error
        "memory_bytes = 999_999_999_999\n"  # above the server maximum: a semantic one
        'backends = ["gpu"]\n'  # a type error
        'mounts = [{host_path = "/etc", guest_path = "/x", mode = "rw"}]\n'  # semantic
    )
    path = write(tmp_path, "p", body)
    problems = load_policy_file(path).problems
    errors = [(p.line, p.field.split(".")[0]) for p in problems if p.severity == "error"]
    assert errors == [
        (1, "wall_time_ms"),
        (2, "memory_bytes"),
        (3, "backends"),
        (4, "mounts"),
    ]


def test_duplicate_policy_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write(tmp_path / "a", "same", "wall_time_ms = 100\n")
    second = write(tmp_path / "b", "same", "wall_time_ms = 200\n")
    errors = [str(p) for p in lint_files([tmp_path / "a", tmp_path / "b"])]
    assert any(e.startswith(f"{second}:") and "also defined in" in e for e in errors), errors


def test_server_maximums_come_from_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "p", "wall_time_ms = 5000\n")
    assert errors_of(path) == []
    tight = ServerMaximums(wall_time_ms=1000)
    assert any("above the server maximum 1000" in e for e in errors_of(path, tight))
    config = tmp_path / "server.toml"
    config.write_text("[policies.maximums]\nwall_time_ms = 1000\n")
    assert main(["policy", "lint", str(path), "--config", str(config)]) == 1
    assert main(["policy", "lint", str(path)]) == 0


def test_warnings_do_not_fail_lint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        "p",
        """
        backends = ["monty"]
        allow_fallback = true
        denied_imports = ["posix"]
        container_image = "x:1"
        [[mounts]]
        host_path = "/srv/data"
        guest_path = "/data"
        """,
    )
    assert main(["policy", "lint", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}:2: warning: allow_fallback: has no effect" in out
    assert f"{path}:3: warning: denied_imports: does not deny" in out
    assert f"{path}:4: warning: container_image: has no effect" in out
    assert "warning: mounts: applied to Monty runs and sessions only" in out


def test_lint_cli_exit_status_and_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, "bad", "wall_time_ms = 100\nbogus = 1\n")
    assert main(["policy", "lint", str(bad)]) == 1
    assert f"{bad}:2: bogus: unknown key" in capsys.readouterr().out


def test_show_fills_defaults_and_prints_the_digest(tmp_path: Path) -> None:
    write(tmp_path, "small", "wall_time_ms = 100\n")
    policies, _ = load_policy_dir(tmp_path)
    policy = policies["small"]
    text = show(policy)
    assert text.startswith(f"# digest {policy.digest}\n")
    assert 'network = "none"' in text and "memory_bytes = 268_435_456" in text
    # The shown form is itself a valid policy file with the same digest.
    again = write(tmp_path / ".." / tmp_path.name, "small", text)
    reloaded = load_policy_file(again).policy
    assert reloaded is not None and reloaded.digest == policy.digest


def test_digest_is_stable_and_content_addressed() -> None:
    a = Policy(name="x", denied_imports=frozenset({"a", "b", "c"}))
    b = Policy(name="x", denied_imports=frozenset({"c", "b", "a"}))
    assert a.digest == b.digest
    assert Policy(name="x", wall_time_ms=1).digest != a.digest


def test_diff_names_what_each_side_permits_more() -> None:
    tight = Policy(name="tight", wall_time_ms=1000, backends=frozenset({"monty"}))  # type: ignore[arg-type]
    loose = Policy(name="loose", denied_imports=frozenset({"ctypes"}))
    text, same = diff(tight, loose)
    assert not same
    a_part, b_part = text.split("loose permits, tight does not:")
    assert "(nothing)" in a_part
    assert "wall_time_ms up to 10,000 ms (not only 1,000)" in b_part
    assert "runs on the container backend" in b_part
    assert "imports importlib" in b_part
    assert diff(tight, tight) == (diff(tight, tight)[0], True)


def test_diff_and_explain_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policies = str(REPO / "policies")
    assert main(["policy", "diff", "pure-compute", "pure-compute", "--dir", policies]) == 0
    assert main(["policy", "diff", "pure-compute", "data-analysis", "--dir", policies]) == 1
    assert "+ runs on the container backend" in capsys.readouterr().out
    assert main(["policy", "explain", "pure-compute", "--dir", policies]) == 0
    out = capsys.readouterr().out
    assert "no network access" in out and "2 s of wall time" in out
    assert "never fall back" in out
    with pytest.raises(SystemExit):
        main(["policy", "show", "nope", "--dir", policies])


def test_explain_mentions_every_capability() -> None:
    text = explain(Policy(name="d"))
    for phrase in (
        "Monty",
        "container",
        "no network",
        "wall time",
        "processes",
        "import",
        "host files",
        "Sessions",
        "audit log",
    ):
        assert phrase in text


def test_the_wait_and_check_budgets_are_policy_fields_under_the_server_maximums(
    tmp_path: Path,
) -> None:
    policy = Policy(name="d")
    assert (policy.tool_wait_ms, policy.static_check_ms) == (60_000, 2_000)
    text = explain(Policy(name="w", tool_wait_ms=5_000, static_check_ms=500))
    assert "waits at most 5 s for its answer" in text and "may take 0.5 s" in text
    report, same = diff(policy, Policy(name="patient", tool_wait_ms=600_000))
    assert not same and "tool_wait_ms" in report.split("patient permits")[1]
    for field in ("tool_wait_ms", "static_check_ms"):
        path = write(tmp_path, f"p-{field}", f"{field} = 999_999_999\n")
        assert any(f"{field}: 999999999 is above the server maximum" in e for e in errors_of(path))
