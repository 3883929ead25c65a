"""Server settings: defaults, then a TOML file, then SANDBOX_* environment variables."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MiB = 1024 * 1024


class ConfigError(Exception):
    """The configuration cannot be used; the message says which file and field."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="forbid", frozen=True)

    # Loopback by default; any other address is refused until authentication exists.
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

    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def check_bind(self) -> None:
        """Refuses a non-loopback bind: there are no credentials to protect it with."""
        if not _is_loopback(self.host):
            raise ConfigError(
                f"refusing to listen on {self.host}: without authentication configured the "
                "server binds to loopback only (127.0.0.1 or ::1)"
            )


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
