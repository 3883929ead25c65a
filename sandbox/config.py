"""Server settings: defaults, then a TOML file, then SANDBOX_* environment variables, then
keyword overrides (the command line's --host and --port).

Settings come in sections, each a frozen value object handed whole to the one component
that uses it:

    [server]     host, port, max_message_bytes, event_loop          SandboxServer
    [tls]        cert_file, key_file, client_ca_file                 bind()
    [monty]      worker counts, warm sessions, timeouts              MontyBackend
    [container]  enabled, image, runtime, pool, admission, engine    ContainerBackend
    [sessions]   max_open, idle_timeout_s                            SessionRegistry
    [policies]   dir, default, maximums, reload_poll_s               load_policies, Reloader
    [tenants]    file                                                load_tenants, Reloader
    [audit]      dir, fsync, max_file_bytes, key, anchor_file        AuditLog
    [metrics]    port, host                                          Metrics.serve
    [journal]    enabled, state_dir, path, retention_s, checkpoint   build_journal
    [log]        format, level                                       configure_logging

In TOML a section is a table (`[monty]` then `min_workers = 4`); in the environment it is
`SANDBOX_<SECTION>__<FIELD>` (`SANDBOX_MONTY__MIN_WORKERS=4`); as a keyword, a mapping
(`load_settings(monty={"min_workers": 4})`) or the section object itself.

The flat names of 0.2 (`monty_min_workers`, `SANDBOX_MONTY_MIN_WORKERS`, ...) still work
for this release, in all three places, with a DeprecatedSettingWarning naming the new
spelling: RENAMED is the one table of old to new. Where one place gives both spellings of
a field, the new one wins; between places, the usual order holds (a keyword beats the
environment, which beats the file).

Where the section types live, so that nothing cycles and a backend stays free of server
concerns: the backends' own sections sit beside them (sandbox/backends/monty/settings.py,
sandbox/backends/container/settings.py; pydantic only), and a backend imports nothing of
this module. The server's components (sessions, reload, audit, metrics, journal, log,
bind) import their section from here. This module imports no component: only those two
leaf modules and the policy value type ServerMaximums."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from sandbox.backends.container.settings import ContainerSettings
from sandbox.backends.monty.settings import MontySettings
from sandbox.errors import ConfigError
from sandbox.policy.model import ServerMaximums

MiB = 1024 * 1024


__all__ = [
    "RENAMED",
    "AuditSettings",
    "ConfigError",
    "ContainerSettings",
    "DeprecatedSettingWarning",
    "JournalSettings",
    "LogSettings",
    "MetricsSettings",
    "MontySettings",
    "PolicySettings",
    "ServerSettings",
    "SessionSettings",
    "Settings",
    "TenantSettings",
    "TlsSettings",
    "load_settings",
]


class DeprecatedSettingWarning(DeprecationWarning):
    """A setting was given by its old flat name; the message names the new spelling."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    """The gRPC listener and the loop it runs on."""

    # Loopback by default; any other address is refused unless tenants (credentials) are
    # configured in [tenants] file.
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    # Share the port with other processes (SO_REUSEPORT). Off: a second server on a port
    # in use fails to start instead of silently taking half the calls.
    reuse_port: bool = False
    # Largest request or response on the wire.
    max_message_bytes: int = Field(default=8 * MiB, gt=0)
    # uvloop: libuv's event loop, measurably cheaper per request (bench/monty_roundtrip.py)
    # because every Monty turn wakes the loop from another thread; asyncio: the standard one.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"


class TlsSettings(_Section):
    """TLS: server certificate and key (PEM). None: plaintext (loopback only, unless tenants
    hold API keys). With a client CA, client certificates are required and their common
    name identifies the tenant (mutual TLS)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None


class SessionSettings(_Section):
    """Sessions (a backend's interpreter kept between runs)."""

    # Sessions kept open at once (then THROTTLED), and how long an unused one lives.
    max_open: int = Field(default=100, ge=0)
    idle_timeout_s: float = Field(default=300.0, gt=0)


class PolicySettings(_Section):
    """Where execution policies come from and what they may grant."""

    # Policy files (*.toml, one policy each) beside the built-in `default`; None: only it.
    dir: Path | None = None
    # The policy a request that names none runs under (a tenant's own default wins).
    default: str = "default"
    # The most any policy may grant; a policy file above them is refused.
    maximums: ServerMaximums = ServerMaximums()
    # How often to look for changed policy or tenant files (SIGHUP reloads at once); 0: never.
    reload_poll_s: float = Field(default=2.0, ge=0)


class TenantSettings(_Section):
    """Who may call."""

    # Tenants, their API key digests, policies and quotas (TOML). None: no authentication,
    # every caller is tenant `local`, and only a loopback bind is allowed.
    file: Path | None = None


class AuditSettings(_Section):
    """The hash-chained audit log."""

    # Audit log directory (JSON lines, rotated by size); None: no audit log.
    dir: Path | None = None
    # always: a response waits for its record's fsync; batch: records are fsynced by the
    # writer thread as they come, off the request path; never: the OS flushes.
    fsync: Literal["always", "batch", "never"] = "batch"
    max_file_bytes: int = Field(default=64 * MiB, gt=0)
    # The HMAC key every record is signed with (SANDBOX_AUDIT__KEY), or a file holding it;
    # neither: journal.state_dir/audit.key, generated on first start (mode 0600). The
    # server holds it; reviewers check with a copy (`sandbox audit verify --key-file`).
    # Keep it out of the log directory: whoever can read it can forge records. Never logged.
    key: SecretStr | None = None
    key_file: Path | None = None
    # Where the writer keeps the chain's head (last seq and hash, signed), overwritten at
    # most every 50 ms and on rotation and shutdown; verify compares the log's end with
    # it. None: dir/anchor.json (catches a cut-off tail; elsewhere, e.g. another
    # filesystem, it also survives whoever can rewrite the log directory).
    anchor_file: Path | None = None


class MetricsSettings(_Section):
    """Prometheus metrics over HTTP (/metrics)."""

    # None: off. Loopback unless stated.
    port: int | None = Field(default=None, ge=0, le=65535)
    host: str = "127.0.0.1"


class JournalSettings(_Section):
    """Durable runs (sandbox/durable): the execution journal and the checkpoint key."""

    # Off: no idempotency and no tool runs.
    enabled: bool = True
    # The server's own files: the journal and, unless checkpoint_key is given, the
    # checkpoint HMAC key (generated here on first start).
    state_dir: Path = Path.home() / ".local" / "state" / "sandbox"
    # The journal (exactly-once replies, tool-run checkpoints); None: state_dir/journal.sqlite3.
    path: Path | None = None
    # How long a finished (or abandoned) execution's record is kept for replays.
    retention_s: float = Field(default=24 * 3600.0, gt=0)
    # The HMAC key checkpoints are signed with (SANDBOX_JOURNAL__CHECKPOINT_KEY), or a file
    # holding it; neither: state_dir/checkpoint.key. Never logged.
    checkpoint_key: SecretStr | None = None
    checkpoint_key_file: Path | None = None


class LogSettings(_Section):
    """The server's own log (stderr, one line per event)."""

    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


# The flat names of 0.2 and where each lives now. Kept for one release; then this table,
# _Renamed and _legacy_environment go.
RENAMED: dict[str, tuple[str, str]] = {
    "host": ("server", "host"),
    "port": ("server", "port"),
    "max_message_bytes": ("server", "max_message_bytes"),
    "event_loop": ("server", "event_loop"),
    "tls_cert_file": ("tls", "cert_file"),
    "tls_key_file": ("tls", "key_file"),
    "tls_client_ca_file": ("tls", "client_ca_file"),
    "monty_min_workers": ("monty", "min_workers"),
    "monty_max_workers": ("monty", "max_workers"),
    "monty_warm_sessions": ("monty", "warm_sessions"),
    "monty_checkout_timeout_s": ("monty", "checkout_timeout_s"),
    "monty_request_timeout_s": ("monty", "request_timeout_s"),
    "container_enabled": ("container", "enabled"),
    "container_image": ("container", "image"),
    "container_runtime": ("container", "runtime"),
    "container_pool_size": ("container", "pool_size"),
    "container_max_concurrency": ("container", "max_concurrency"),
    "container_queue_size": ("container", "queue_size"),
    "container_queue_timeout_s": ("container", "queue_timeout_s"),
    "docker_host": ("container", "docker_host"),
    "container_scope": ("container", "scope"),
    "max_sessions": ("sessions", "max_open"),
    "session_idle_timeout_s": ("sessions", "idle_timeout_s"),
    "policy_dir": ("policies", "dir"),
    "default_policy": ("policies", "default"),
    "policy_maximums": ("policies", "maximums"),
    "reload_poll_s": ("policies", "reload_poll_s"),
    "tenants_file": ("tenants", "file"),
    "audit_dir": ("audit", "dir"),
    "audit_fsync": ("audit", "fsync"),
    "audit_max_file_bytes": ("audit", "max_file_bytes"),
    "metrics_port": ("metrics", "port"),
    "metrics_host": ("metrics", "host"),
    "state_dir": ("journal", "state_dir"),
    "journal_enabled": ("journal", "enabled"),
    "journal_path": ("journal", "path"),
    "journal_retention_s": ("journal", "retention_s"),
    "checkpoint_key": ("journal", "checkpoint_key"),
    "checkpoint_key_file": ("journal", "checkpoint_key_file"),
    "log_format": ("log", "format"),
    "log_level": ("log", "level"),
}

_Style = Literal["keyword", "env", "toml"]


def _spellings(style: _Style, old: str, section: str, field: str) -> tuple[str, str]:
    """(old, new) as the user would write them in that place."""
    if style == "env":
        return f"SANDBOX_{old.upper()}", f"SANDBOX_{section.upper()}__{field.upper()}"
    if style == "toml":
        return f"`{old}`", f"`{field}` under [{section}]"
    return f"keyword `{old}`", f"{section}={{{field!r}: ...}}"


def _renamed(values: dict[str, Any], style: _Style, where: str = "") -> dict[str, Any]:
    """`values` with every old flat name moved into its section, each with a warning. A
    new-style value given here for the same field wins."""
    out = dict(values)
    for old in [key for key in out if key in RENAMED]:
        section, field = RENAMED[old]
        value = out.pop(old)
        current = out.get(section, {})
        # A section object counts as giving all its fields; a section that is neither
        # mapping nor object is left for validation to refuse.
        taken = not isinstance(current, dict) or field in current
        if not taken:
            out[section] = {**current, field: value}
        old_text, new_text = _spellings(style, old, section, field)
        message = f"{where}{old_text} is deprecated; use {new_text}"
        if taken:
            message += f" (given too, so {old_text} is ignored)"
        warnings.warn(
            message + "; the flat names go in the next release",
            DeprecatedSettingWarning,
            stacklevel=_outside_stacklevel(),
        )
    return out


def _outside_stacklevel() -> int:
    """The stacklevel of the first frame outside this module and pydantic: the code that
    built the settings, which is where a warning filter should look."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        (__name__, "pydantic")
    ):
        frame, level = frame.f_back, level + 1
    return level


def _legacy_environment() -> dict[str, Any]:
    """SANDBOX_<OLD_NAME> variables (case-insensitive, as pydantic-settings reads them)."""
    environ = {key.lower(): value for key, value in os.environ.items()}
    found: dict[str, Any] = {}
    for old, (section, field) in RENAMED.items():
        value = environ.get(f"sandbox_{old}")
        if value is None:
            continue
        target = Settings.model_fields[section].annotation
        assert isinstance(target, type) and issubclass(target, BaseModel)
        annotation = target.model_fields[field].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            # A nested model comes as JSON, as pydantic-settings reads it.
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ConfigError(f"SANDBOX_{old.upper()}: not valid JSON: {exc}") from None
        found[old] = value
    return found


class _Renamed(PydanticBaseSettingsSource):
    """Another source's values, with old flat names moved into their sections."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        inner: PydanticBaseSettingsSource,
        style: _Style,
        *,
        where: str = "",
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(settings_cls)
        self.inner, self.style, self.where, self.extra = inner, style, where, extra

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        values = self.inner()
        if self.extra is not None:
            values = {**self.extra(), **values}
        return _renamed(values, self.style, self.where)


class Settings(BaseSettings):
    """Everything the server is configured with, one section per component."""

    model_config = SettingsConfigDict(
        env_prefix="SANDBOX_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerSettings = ServerSettings()
    tls: TlsSettings = TlsSettings()
    monty: MontySettings = MontySettings()
    container: ContainerSettings = ContainerSettings()
    sessions: SessionSettings = SessionSettings()
    policies: PolicySettings = PolicySettings()
    tenants: TenantSettings = TenantSettings()
    audit: AuditSettings = AuditSettings()
    metrics: MetricsSettings = MetricsSettings()
    journal: JournalSettings = JournalSettings()
    log: LogSettings = LogSettings()

    # The TOML file read below the environment and keywords (load_settings' config_file).
    toml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (
            _Renamed(settings_cls, init_settings, "keyword"),
            _Renamed(settings_cls, env_settings, "env", extra=_legacy_environment),
        )
        toml_file = cls.toml_file
        if toml_file is not None:
            toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_file)
            sources += (_Renamed(settings_cls, toml, "toml", where=f"{toml_file}: "),)
        return sources

    def check_bind(self, has_credentials: bool | None = None) -> None:
        """Refuses a non-loopback bind unless credentials (tenants) are configured."""
        if has_credentials is None:
            has_credentials = self.tenants.file is not None
        host = self.server.host
        if not _is_loopback(host) and not has_credentials:
            raise ConfigError(
                f"refusing to listen on {host}: without credentials configured "
                "([tenants] file with API keys or client certificates) the server binds to "
                "loopback only (127.0.0.1 or ::1)"
            )
        tls = self.tls
        if bool(tls.cert_file) != bool(tls.key_file):
            raise ConfigError("tls.cert_file and tls.key_file go together")
        if tls.client_ca_file and not tls.cert_file:
            raise ConfigError("tls.client_ca_file needs tls.cert_file and tls.key_file")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `config_file` (TOML) and the environment; `overrides` (section name
    -> mapping or section object) win over both. Raises ConfigError naming the file (or
    the environment) and the field."""
    if config_file is not None:
        try:
            tomllib.loads(config_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{config_file}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{config_file}: not UTF-8 text: {exc.reason}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: not valid TOML: {exc}") from None

    class _Settings(Settings):
        toml_file: ClassVar[Path | None] = config_file

    where = str(config_file) if config_file else "settings"
    try:
        return _Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None
    except SettingsError as exc:
        # An environment variable that should hold JSON (a whole section) does not.
        raise ConfigError(f"environment: {exc}") from None
