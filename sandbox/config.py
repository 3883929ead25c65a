"""Server settings: defaults, then a TOML file, then SANDBOX_* environment variables."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sandbox.policy.model import ServerMaximums

MiB = 1024 * 1024


class ConfigError(Exception):
    """The configuration cannot be used; the message says which file and field."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="forbid", frozen=True)

    # Loopback by default; any other address is refused unless tenants (credentials) are
    # configured in `tenants_file`.
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    # Largest request or response on the wire.
    max_message_bytes: int = Field(default=8 * MiB, gt=0)

    # Monty worker processes kept warm, and the most that may run at once.
    monty_min_workers: int = Field(default=2, ge=0)
    # Sessions hold a worker each while open, so this is well above the core count.
    monty_max_workers: int = Field(default=16, gt=0)
    # Fresh sessions checked out ahead of demand (capped below max workers): a run then
    # skips the checkout. 0 turns it off.
    monty_warm_sessions: int = Field(default=2, ge=0)
    # How long a request waits for a free worker before INFRA_UNAVAILABLE.
    monty_checkout_timeout_s: float = Field(default=10.0, gt=0)
    # Host-side backstop per worker turn, above any policy's wall-time budget.
    monty_request_timeout_s: float = Field(default=120.0, gt=0)

    # The container backend (Docker). Off by default: it needs an engine and `make image`.
    container_enabled: bool = False
    # Image the runner ships in (images/Dockerfile, built by `make image`).
    container_image: str = "sandbox-runner:latest"
    # OCI runtime: runc, or gVisor's runsc (a user-space kernel; register it with dockerd).
    container_runtime: Literal["runc", "runsc"] = "runc"
    # Containers kept started and waiting for a job, for the default policy's limits.
    container_pool_size: int = Field(default=2, ge=0)
    # Container runs at once, and how many more may wait (then INFRA_UNAVAILABLE).
    container_max_concurrency: int = Field(default=4, gt=0)
    container_queue_size: int = Field(default=32, ge=0)
    container_queue_timeout_s: float = Field(default=30.0, gt=0)
    # Engine address; None: DOCKER_HOST, else the local socket.
    docker_host: str | None = None
    # Containers are labelled with this; start-up reaps those of this scope whose server died.
    container_scope: str = "default"

    # Sessions kept at once, and how long an unused one lives.
    max_sessions: int = Field(default=100, ge=0)
    session_idle_timeout_s: float = Field(default=300.0, gt=0)

    # Policy files (*.toml, one policy each) beside the built-in `default`; None: only it.
    policy_dir: Path | None = None
    # The policy a request that names none runs under (a tenant's own default wins).
    default_policy: str = "default"
    # The most any policy may grant; a policy file above them is refused.
    policy_maximums: ServerMaximums = ServerMaximums()
    # How often to look for changed policy or tenant files (SIGHUP reloads at once); 0: never.
    reload_poll_s: float = Field(default=2.0, ge=0)

    # Tenants, their API key digests, policies and quotas (TOML). None: no authentication,
    # every caller is tenant `local`, and only a loopback bind is allowed.
    tenants_file: Path | None = None
    # TLS: server certificate and key (PEM). With a client CA, client certificates are
    # required and their common name identifies the tenant (mutual TLS).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None

    # Audit log directory (hash-chained JSON lines, rotated by size); None: no audit log.
    audit_dir: Path | None = None
    # always: a response waits for its record's fsync; batch: records are fsynced by the
    # writer thread as they come, off the request path; never: the OS flushes.
    audit_fsync: Literal["always", "batch", "never"] = "batch"
    audit_max_file_bytes: int = Field(default=64 * MiB, gt=0)

    # Prometheus metrics over HTTP (/metrics); None: off. Loopback unless stated.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # Durable runs (durable.py). The server's own files: the journal and, unless
    # checkpoint_key is given, the checkpoint HMAC key (generated here on first start).
    state_dir: Path = Path.home() / ".local" / "state" / "sandbox"
    # The execution journal (exactly-once replies, tool-run checkpoints); off: no
    # idempotency and no tool runs. None: state_dir/journal.sqlite3.
    journal_enabled: bool = True
    journal_path: Path | None = None
    # How long a finished (or abandoned) execution's record is kept for replays.
    journal_retention_s: float = Field(default=24 * 3600.0, gt=0)
    # The HMAC key checkpoints are signed with (SANDBOX_CHECKPOINT_KEY), or a file holding
    # it; neither: state_dir/checkpoint.key. Never logged.
    checkpoint_key: SecretStr | None = None
    checkpoint_key_file: Path | None = None

    # uvloop: libuv's event loop, measurably cheaper per request (bench/monty_roundtrip.py)
    # because every Monty turn wakes the loop from another thread; asyncio: the standard one.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def check_bind(self, has_credentials: bool | None = None) -> None:
        """Refuses a non-loopback bind unless credentials (tenants) are configured."""
        if has_credentials is None:
            has_credentials = self.tenants_file is not None
        if not _is_loopback(self.host) and not has_credentials:
            raise ConfigError(
                f"refusing to listen on {self.host}: without credentials configured "
                "(tenants_file with API keys or client certificates) the server binds to "
                "loopback only (127.0.0.1 or ::1)"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("tls_client_ca_file needs tls_cert_file and tls_key_file")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `config_file` (TOML) and the environment; `overrides` win over both."""
    if config_file is not None:
        try:
            tomllib.loads(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"{config_file}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: not valid TOML: {exc}") from None

    class _Settings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
            if config_file is not None:
                sources += (TomlConfigSettingsSource(settings_cls, toml_file=config_file),)
            return sources

    try:
        return _Settings(**overrides)
    except ValidationError as exc:
        where = str(config_file) if config_file else "settings"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None
