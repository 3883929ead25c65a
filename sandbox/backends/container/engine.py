"""Blocking calls to the Docker engine (docker-py), by container id: create (with the
hardening below), attach, start, pause and unpause, kill, wait for, inspect, remove and
list sandbox containers. What is said over the attach socket is conversation.py's. Everything here
runs in worker threads, never on the event loop."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import docker
import docker.errors as de
from docker.types import LogConfig, Ulimit

from sandbox.backends.outcome_parts import first_line
from sandbox.core.limits import EffectiveLimits

Runtime = Literal["runc", "runsc"]

OWNER_LABEL = "dev.sandbox.owner"
OWNER = "sandbox-server"
SCOPE_LABEL = "dev.sandbox.scope"
INSTANCE_LABEL = "dev.sandbox.instance"

WORKDIR = "/workspace"
SANDBOX_USER = "10001:10001"  # the code's uid and gid, set by the supervisor
START_USER = "0:0"  # the supervisor's, until it has started the runner
NOFILE = 256
RUNSC_HOST_PIDS = 1024
RUNSC_THREADS_PER_PROCESS = 16
MiB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Shape:
    """What a container is created with; containers of equal shape are interchangeable."""

    image: str
    runtime: Runtime
    memory_bytes: int
    cpu_millis: int
    pids: int
    disk_bytes: int

    @classmethod
    def of(cls, limits: EffectiveLimits, *, image: str, runtime: Runtime) -> Shape:
        return cls(
            image=image,
            runtime=runtime,
            memory_bytes=limits.memory_bytes,
            cpu_millis=limits.cpu_millis,
            pids=limits.pids,
            disk_bytes=limits.disk_bytes,
        )


@dataclass(frozen=True)
class ExitState:
    """How a container ended, as the engine saw it."""

    oom_killed: bool  # State.OOMKilled
    exit_code: int | None  # None: still running


def host_config_args(shape: Shape) -> dict[str, Any]:
    """The container's confinement. Nothing of the host is mounted."""
    # The disk budget is split: work dir half, /tmp and /dev/shm a quarter each. tmpfs
    # pages also count against the memory cap.
    work, scratch = shape.disk_bytes // 2, shape.disk_bytes // 4
    tmpfs = "rw,nosuid,nodev,noexec,uid=10001,gid=10001,mode=0700,size={}"
    ulimits = [
        Ulimit(name="nofile", soft=NOFILE, hard=NOFILE),
        Ulimit(name="fsize", soft=work, hard=work),
        Ulimit(name="core", soft=0, hard=0),
    ]
    pids_limit = shape.pids
    if shape.runtime == "runsc":
        # gVisor's own kernel enforces RLIMIT_NPROC per sandbox, so the code's process cap
        # goes there. The host pids cgroup counts the sentry's threads (several per
        # process of the code); capped at `pids` it would kill the whole sandbox (a Go
        # "cannot create thread" exit) instead of failing the code's fork.
        ulimits.append(Ulimit(name="nproc", soft=shape.pids, hard=shape.pids))
        pids_limit = max(RUNSC_HOST_PIDS, RUNSC_THREADS_PER_PROCESS * shape.pids)
    return {
        "network_mode": "none",
        "mem_limit": shape.memory_bytes,
        "memswap_limit": shape.memory_bytes,  # equal: no swap on top of the cap
        "nano_cpus": shape.cpu_millis * 1_000_000,
        "pids_limit": pids_limit,
        "read_only": True,
        "tmpfs": {WORKDIR: tmpfs.format(work), "/tmp": tmpfs.format(scratch)},
        "shm_size": max(scratch, MiB),
        # Root with two capabilities, for the supervisor (images/runner/supervisor.py)
        # to run the code's runner as SANDBOX_USER and itself as another uid; both
        # drop them, so none is left once the runner is up.
        "cap_drop": ["ALL"],
        "cap_add": ["SETUID", "SETGID"],
        "security_opt": ["no-new-privileges"],
        "ulimits": ulimits,
        "ipc_mode": "private",
        "init": False,  # the supervisor is pid 1, and reaps what a fork bomb leaves
        "runtime": shape.runtime,
        # No log driver: runaway output must not land on the host's disk. attach still works.
        "log_config": LogConfig(type="none"),
    }


# 128 + SIGKILL. dockerd can record a runsc OOM kill after the exit and then leave the
# container's OOMKilled flag unset (seen under load: "die" before "oom", flag false for
# good), so such an exit asks the engine's event log, waiting this long for the event.
_SIGKILLED = 137
_OOM_EVENT_WAIT_S = 2.0


# An image says which modules it adds to the standard library in this label, space
# separated (images/Dockerfile.datascience).
MODULES_LABEL = "dev.sandbox.python-modules"


def unavailable(docker_host: str | None, image: str) -> str | None:
    """Why containers cannot be served from `image` on this engine now; None if they can."""
    try:
        client = (
            docker.DockerClient(base_url=docker_host, timeout=5)
            if docker_host
            else docker.from_env(timeout=5)
        )
    except de.DockerException as exc:
        return f"no Docker engine answers ({first_line(str(exc))})"
    try:
        client.ping()
        client.images.get(image)
    except de.ImageNotFound:
        return f"the image {image} is missing (build it with `make image`)"
    except (de.DockerException, OSError) as exc:
        return f"no Docker engine answers ({first_line(str(exc))})"
    finally:
        client.close()
    return None


class Engine:
    def __init__(self, *, docker_host: str | None, labels: dict[str, str], max_pool: int) -> None:
        self._docker_host = docker_host
        self.labels = labels
        self._max_pool = max_pool
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    def client(self) -> docker.DockerClient:
        """The engine client, connected on first use (the engine may come up after us)."""
        with self._lock:
            if self._client is None:
                kwargs: dict[str, Any] = {"version": "auto", "timeout": 30}
                kwargs["max_pool_size"] = self._max_pool
                if self._docker_host:
                    self._client = docker.DockerClient(base_url=self._docker_host, **kwargs)
                else:
                    self._client = docker.from_env(**kwargs)
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def ping(self) -> bool:
        return bool(self.client().ping())

    def image_exists(self, image: str) -> bool:
        try:
            self.client().images.get(image)
        except de.ImageNotFound:
            return False
        return True

    def image_labels(self, image: str) -> dict[str, str]:
        """The image's labels; empty when it has none, is not there, or the engine fails."""
        api: Any = self.client().api
        try:
            labels = api.inspect_image(image)["Config"].get("Labels")
        except (de.DockerException, OSError):
            return {}
        return dict(labels or {})

    def create(self, shape: Shape) -> str:
        """A new container of `shape`, not started, its stdin open; its id."""
        api = self.client().api
        created = api.create_container(
            shape.image,
            stdin_open=True,
            tty=False,
            user=START_USER,
            working_dir=WORKDIR,
            hostname="sandbox",
            network_disabled=True,
            labels=self.labels,
            host_config=api.create_host_config(**host_config_args(shape)),
        )
        container_id: str = created["Id"]
        return container_id

    def attach(self, container_id: str) -> Any:
        """docker-py's socket to the container's stdin, stdout and stderr (multiplexed)."""
        return self.client().api.attach_socket(
            container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        )

    def start(self, container_id: str) -> None:
        self.client().api.start(container_id)

    def wait_exit(self, container_id: str, timeout_s: int) -> ExitState | None:
        """How the container ended, waiting at most `timeout_s` for it to; one still
        running then is killed. None: it was removed from outside, its status is lost."""
        api = self.client().api
        try:
            api.wait(container_id, timeout=timeout_s)
        except de.NotFound:
            return None
        except (de.APIError, OSError):
            self.kill(container_id)  # still running after closing its output: stop it
        try:
            state = api.inspect_container(container_id)["State"]
        except de.NotFound:
            return None
        exit_code = None if state.get("Running") else int(state.get("ExitCode", 0))
        oom_killed = bool(state.get("OOMKilled"))
        if not oom_killed and exit_code == _SIGKILLED:
            oom_killed = self._oom_event(container_id, state.get("StartedAt"))
        return ExitState(oom_killed=oom_killed, exit_code=exit_code)

    def _oom_event(self, container_id: str, started_at: object) -> bool:
        """Whether the engine's event log holds an OOM kill of this container."""
        since = _epoch(started_at)
        if since is None or since <= 0:  # never started, or a zero time: the last hour
            since = time.time() - 3600
        try:
            events = self.client().api.events(
                since=int(since),
                until=int(time.time() + _OOM_EVENT_WAIT_S) + 1,
                filters={"container": container_id, "event": "oom"},
                decode=True,
            )
            try:
                return any(True for _ in events)
            finally:
                events.close()
        except (de.APIError, OSError, ValueError):
            return False

    def pause(self, container_id: str) -> None:
        """Freezes every process in the container (the cgroup freezer; gVisor's own
        pause under runsc): threads the code left running stop using the CPU."""
        self.client().api.pause(container_id)

    def unpause(self, container_id: str) -> None:
        self.client().api.unpause(container_id)

    def kill(self, container_id: str) -> None:
        with contextlib.suppress(de.APIError):  # already gone or already stopped
            self.client().api.kill(container_id)

    def remove(self, container_id: str) -> None:
        # NotFound: removed already; 409: a removal is in progress.
        with contextlib.suppress(de.APIError):
            self.client().api.remove_container(container_id, force=True)

    def list_ours(self, *, instance: str) -> list[str]:
        """Containers one backend instance made."""
        labels = [f"{OWNER_LABEL}={OWNER}", f"{INSTANCE_LABEL}={instance}"]
        found = self.client().api.containers(all=True, filters={"label": labels})
        return [c["Id"] for c in found]

    def list_scope(self) -> list[tuple[str, dict[str, str]]]:
        """(id, labels) of every container of our scope, whoever made it."""
        labels = [f"{OWNER_LABEL}={OWNER}", f"{SCOPE_LABEL}={self.labels[SCOPE_LABEL]}"]
        found = self.client().api.containers(all=True, filters={"label": labels})
        return [(c["Id"], c.get("Labels") or {}) for c in found]


def _epoch(docker_time: object) -> float | None:
    """Seconds since the epoch of an engine timestamp ("2026-12-01T23:59:58.123456789Z")."""
    if not isinstance(docker_time, str) or not docker_time:
        return None
    whole = docker_time.split(".")[0].removesuffix("Z")
    try:
        return datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
