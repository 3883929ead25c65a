"""Settings by section: TOML tables, SANDBOX_<SECTION>__<FIELD> variables, keyword
mappings; the flat names of 0.2 still land in the right place, with a warning naming the
new spelling; anything else is a ConfigError naming the file and the field."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import typing
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

from sandbox.config import (
    RENAMED,
    ConfigError,
    ContainerSettings,
    DeprecatedSettingWarning,
    MontySettings,
    ServerSettings,
    Settings,
    TlsSettings,
    load_settings,
)
from sandbox.policy.model import ServerMaximums

# A valid value, other than the default, for every old flat name.
SAMPLES: dict[str, Any] = {
    "host": "::1",
    "port": 6000,
    "max_message_bytes": 1024,
    "event_loop": "asyncio",
    "tls_cert_file": "/etc/sandbox/server.pem",
    "tls_key_file": "/etc/sandbox/server.key",
    "tls_client_ca_file": "/etc/sandbox/ca.pem",
    "monty_min_workers": 3,
    "monty_max_workers": 5,
    "monty_warm_sessions": 0,
    "monty_checkout_timeout_s": 1.5,
    "monty_request_timeout_s": 9.0,
    "container_enabled": True,
    "container_image": "runner:test",
    "container_runtime": "runsc",
    "container_pool_size": 7,
    "container_max_concurrency": 2,
    "container_queue_size": 1,
    "container_queue_timeout_s": 4.0,
    "docker_host": "unix:///run/other.sock",
    "container_scope": "staging",
    "max_sessions": 9,
    "session_idle_timeout_s": 12.0,
    "policy_dir": "/etc/sandbox/policies",
    "default_policy": "pure-compute",
    "policy_maximums": {"wall_time_ms": 1000},
    "reload_poll_s": 0.5,
    "tenants_file": "/etc/sandbox/tenants.toml",
    "audit_dir": "/var/log/sandbox",
    "audit_fsync": "always",
    "audit_max_file_bytes": 4096,
    "metrics_port": 9100,
    "metrics_host": "0.0.0.0",
    "state_dir": "/var/lib/sandbox",
    "journal_enabled": False,
    "journal_path": "/var/lib/sandbox/j.sqlite3",
    "journal_retention_s": 60.0,
    "checkpoint_key": "s3cret",
    "checkpoint_key_file": "/etc/sandbox/checkpoint.key",
    "log_format": "json",
    "log_level": "debug",
}


def expected(old: str) -> Any:
    """The sample's value as its new field holds it (a Path, a SecretStr, a model)."""
    section, field = RENAMED[old]
    return getattr(section_type(section).model_validate({field: SAMPLES[old]}), field)


def section_type(section: str) -> type[pydantic.BaseModel]:
    model = Settings.model_fields[section].annotation
    assert isinstance(model, type) and issubclass(model, pydantic.BaseModel)
    return model


def landed(settings: Settings, old: str) -> Any:
    section, field = RENAMED[old]
    return getattr(getattr(settings, section), field)


def env_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, dict) else str(value)


def toml_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_text(v)}" for k, v in value.items()) + "}"
    return repr(value)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Old names may be in play; these tests look at the error, not the warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecatedSettingWarning)
        yield


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SANDBOX_") and name.upper() != "SANDBOX_CORPORA":
            monkeypatch.delenv(name)


# Fields added after the flat names were retired have no flat name to keep.
NEWER_THAN_FLAT_NAMES = {
    ("audit", "key"),
    ("audit", "key_file"),
    ("audit", "anchor_file"),
    ("server", "reuse_port"),
}


def test_the_table_covers_every_field_once() -> None:
    fields = {
        (section, field)
        for section in Settings.model_fields
        for field in section_type(section).model_fields
    }
    assert sorted(RENAMED.values()) == sorted(fields - NEWER_THAN_FLAT_NAMES)
    assert set(SAMPLES) == set(RENAMED)
    for old in RENAMED:
        assert expected(old) != landed(Settings(), old), f"{old}: the sample is the default"


def test_sections_are_frozen_value_objects() -> None:
    settings = Settings()
    with pytest.raises(pydantic.ValidationError):
        settings.monty.min_workers = 5  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        MontySettings(min_workers=-1)
    assert Settings().monty == MontySettings()


# -- the new spellings ---------------------------------------------------------------


def test_toml_tables(tmp_path: Path) -> None:
    config = tmp_path / "sandbox.toml"
    config.write_text(
        "[server]\nport = 6000\n[monty]\nmin_workers = 3\n"
        "[policies]\ndir = '/etc/p'\n[policies.maximums]\nwall_time_ms = 1000\n"
    )
    settings = load_settings(config)
    assert settings.server.port == 6000 and settings.server.host == "127.0.0.1"
    assert settings.monty.min_workers == 3 and settings.monty.max_workers == 16
    assert settings.policies.dir == Path("/etc/p")
    assert settings.policies.maximums == ServerMaximums(wall_time_ms=1000)


def test_environment_with_a_double_underscore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_MONTY__MIN_WORKERS", "3")
    monkeypatch.setenv("SANDBOX_POLICIES__MAXIMUMS__WALL_TIME_MS", "1000")
    monkeypatch.setenv("SANDBOX_JOURNAL__CHECKPOINT_KEY", "s3cret")
    settings = load_settings()
    assert settings.monty.min_workers == 3
    assert settings.policies.maximums.wall_time_ms == 1000
    assert settings.journal.checkpoint_key is not None
    assert settings.journal.checkpoint_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_keywords_take_a_mapping_or_the_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_MONTY__MAX_WORKERS", "6")
    # A mapping adds to what the environment gave; a section object replaces it whole.
    assert load_settings(monty={"min_workers": 1}).monty == MontySettings(
        min_workers=1, max_workers=6
    )
    assert load_settings(monty=MontySettings(min_workers=1)).monty == MontySettings(min_workers=1)
    assert Settings(server=ServerSettings(port=0)).server.port == 0


def test_keywords_beat_the_environment_which_beats_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "sandbox.toml"
    config.write_text("[server]\nport = 1\nhost = '::1'\n[log]\nlevel = 'debug'\n")
    monkeypatch.setenv("SANDBOX_SERVER__PORT", "2")
    monkeypatch.setenv("SANDBOX_SERVER__HOST", "localhost")
    settings = load_settings(config, server={"port": 3})
    assert (settings.server.port, settings.server.host, settings.log.level) == (
        3,
        "localhost",
        "debug",
    )


# -- the old flat names, for one release --------------------------------------------


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_an_old_keyword_warns_and_lands(old: str) -> None:
    section, field = RENAMED[old]
    with pytest.warns(DeprecationWarning, match=rf"`{old}`.*{section}=\{{'{field}'"):
        settings = Settings(**{old: SAMPLES[old]})
    assert landed(settings, old) == expected(old)
    with pytest.warns(DeprecatedSettingWarning):
        assert landed(load_settings(**{old: SAMPLES[old]}), old) == expected(old)


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_an_old_variable_warns_and_lands(old: str, monkeypatch: pytest.MonkeyPatch) -> None:
    section, field = RENAMED[old]
    monkeypatch.setenv(f"SANDBOX_{old.upper()}", env_text(SAMPLES[old]))
    new = f"SANDBOX_{section.upper()}__{field.upper()}"
    with pytest.warns(DeprecationWarning, match=rf"SANDBOX_{old.upper()} .*use {new}"):
        settings = load_settings()
    assert landed(settings, old) == expected(old)


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_an_old_toml_key_warns_and_lands(old: str, tmp_path: Path) -> None:
    section, field = RENAMED[old]
    config = tmp_path / "old.toml"
    config.write_text(f"{old} = {toml_text(SAMPLES[old])}\n")
    with pytest.warns(
        DeprecationWarning, match=rf"old\.toml: `{old}` .*use `{field}` under \[{section}\]"
    ):
        settings = load_settings(config)
    assert landed(settings, old) == expected(old)


def test_the_new_spelling_wins_in_one_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.warns(DeprecationWarning, match="is ignored"):
        assert Settings(monty_min_workers=5, monty={"min_workers": 3}).monty.min_workers == 3
    with pytest.warns(DeprecationWarning, match="is ignored"):
        assert Settings(monty_min_workers=5, monty=MontySettings()).monty.min_workers == 2
    config = tmp_path / "both.toml"
    config.write_text("monty_min_workers = 5\nmonty_max_workers = 7\n[monty]\nmin_workers = 3\n")
    with pytest.warns(DeprecationWarning):
        monty = load_settings(config).monty
    assert (monty.min_workers, monty.max_workers) == (3, 7)
    monkeypatch.setenv("SANDBOX_MONTY_MIN_WORKERS", "5")
    monkeypatch.setenv("SANDBOX_MONTY__MIN_WORKERS", "3")
    with pytest.warns(DeprecationWarning, match="SANDBOX_MONTY_MIN_WORKERS is ignored"):
        assert load_settings().monty.min_workers == 3


def test_between_places_the_usual_order_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old variable overrides a file's new table, as a variable always overrides the
    file: an operator's one-off override keeps working while the file is migrated."""
    config = tmp_path / "new.toml"
    config.write_text("[monty]\nmin_workers = 3\n")
    monkeypatch.setenv("SANDBOX_MONTY_MIN_WORKERS", "5")
    with pytest.warns(DeprecationWarning):
        assert load_settings(config).monty.min_workers == 5
    with pytest.warns(DeprecationWarning):
        assert load_settings(config, monty_min_workers=1).monty.min_workers == 1


def test_an_old_keyword_warning_points_at_the_caller() -> None:
    with pytest.warns(DeprecatedSettingWarning) as caught:
        Settings(port=0)
    assert caught[0].filename == __file__


# -- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[monty]\nmin_worker = 1\n", "monty.min_worker: Extra inputs are not permitted"),
        ("bogus = 1\n", "bogus: Extra inputs are not permitted"),
        ("[mounty]\nmin_workers = 1\n", "mounty: Extra inputs are not permitted"),
        ("[monty]\nmin_workers = 'many'\n", "monty.min_workers: Input should be a valid integer"),
        ("[audit]\nmax_file_bytes = -1\n", "audit.max_file_bytes: Input should be greater than 0"),
        ("[server]\nport = 70000\n", "server.port: Input should be less than or equal to 65535"),
        ("monty = 3\n", "monty: Input should be a valid dictionary"),
        ("[container]\nruntime = 'kata'\n", "container.runtime: Input should be 'runc' or"),
        ("[policies.maximums]\npids = 0\n", "policies.maximums.pids: Input should be greater"),
        ("monty_min_workers = -1\n", "monty.min_workers: Input should be greater than or equal"),
        ("[server]\nport = [not toml", "not valid TOML"),
    ],
)
def test_a_bad_file_names_file_and_field(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as raised, quiet():
        load_settings(config)
    assert str(raised.value).startswith(f"{config}: ")
    assert named in str(raised.value)


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[monty]\n")
    with pytest.raises(ConfigError, match=r"binary\.toml: not UTF-8"):
        load_settings(binary)


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("SANDBOX_MONTY__BOGUS", "1", "monty.bogus: Extra inputs are not permitted"),
        ("SANDBOX_MONTY__MIN_WORKERS", "-1", "monty.min_workers: Input should be greater"),
        ("SANDBOX_SERVER__PORT", "http", "server.port: Input should be a valid integer"),
        ("SANDBOX_MONTY", "{not json", 'error parsing value for field "monty"'),
        ("SANDBOX_POLICY_MAXIMUMS", "{not json", "SANDBOX_POLICY_MAXIMUMS: not valid JSON"),
        ("SANDBOX_AUDIT_MAX_FILE_BYTES", "-5", "audit.max_file_bytes: Input should be greater"),
    ],
)
def test_bad_variables_are_config_errors(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, named: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised, quiet():
        load_settings()
    assert named in str(raised.value)


def test_bad_keywords_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="settings: bogus: Extra inputs are not permitted"):
        load_settings(bogus=1)
    with pytest.raises(ConfigError, match=r"monty\.max_workers: Input should be greater than 0"):
        load_settings(monty={"max_workers": 0})


def test_bind_checks_name_the_new_fields(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tls.cert_file and tls.key_file go together"):
        Settings(tls=TlsSettings(cert_file=tmp_path / "c.pem")).check_bind()
    with pytest.raises(ConfigError, match=r"tls.client_ca_file needs tls.cert_file"):
        Settings(tls=TlsSettings(client_ca_file=tmp_path / "ca.pem")).check_bind()
    with pytest.raises(ConfigError, match=r"\[tenants\] file"):
        Settings(server=ServerSettings(host="10.0.0.1")).check_bind()


def test_the_readme_lists_every_section_and_field(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = re.findall(r"^\| `\[(\w+)\]` \| .* \| (.*) \|$", readme, re.M)
    listed = {section: set(re.findall(r"`(?:\[\w+\.)?(\w+)\]?`", names)) for section, names in rows}
    assert listed == {
        section: set(section_type(section).model_fields) for section in Settings.model_fields
    }
    example = re.search(r"```toml\n(\[server\]\n.*?)```", readme, re.S)
    assert example is not None
    config = tmp_path / "readme.toml"
    config.write_text(example.group(1))
    settings = load_settings(config)
    assert settings.container.enabled and settings.monty.max_workers == 32


def test_a_backend_imports_nothing_of_the_server_configuration() -> None:
    """Each backend takes its own section (defined beside it), never sandbox.config, so
    neither the server's settings nor, through them, policies reach a backend."""
    code = (
        "import sys, sandbox.backends.monty.backend, sandbox.backends.container.backend\n"
        "print(sorted(m for m in sys.modules if m.startswith(('sandbox.config', "
        "'sandbox.policy', 'sandbox.access', 'sandbox.durable', 'sandbox.edge'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_container_runtimes_are_the_engines() -> None:
    from sandbox.backends.container.engine import Runtime

    field = ContainerSettings.model_fields["runtime"].annotation
    assert typing.get_args(field) == typing.get_args(Runtime)
