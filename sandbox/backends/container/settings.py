"""The container backend's section of the server's settings (`[container]`), here beside
the backend so that it imports nothing of the server's configuration (and no docker)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ContainerSettings(BaseModel):
    """The container backend (Docker). The pool's containers are shaped for the default
    policy's limits, which the backend is handed beside this section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Off by default: it needs an engine and `make image`. "auto": on when the engine
    # answers and `image` is there, said at start-up (`make run` serves so). (Read by the
    # server, which builds the backend only when it is on.)
    enabled: bool | Literal["auto"] = False
    # Image the runner ships in (images/Dockerfile, built by `make image`).
    image: str = "sandbox-runner:latest"
    # OCI runtime: runc, or gVisor's runsc (a user-space kernel; register it with dockerd).
    runtime: Literal["runc", "runsc"] = "runc"
    # Containers kept started and waiting for a job, for the default policy's limits.
    pool_size: int = Field(default=2, ge=0)
    # Container runs at once, and how many more may wait (then INFRA_UNAVAILABLE).
    max_concurrency: int = Field(default=4, gt=0)
    queue_size: int = Field(default=32, ge=0)
    queue_timeout_s: float = Field(default=30.0, gt=0)
    # Engine address; None: DOCKER_HOST, else the local socket.
    docker_host: str | None = None
    # Containers are labelled with this; start-up reaps those of this scope whose server died.
    scope: str = "default"
