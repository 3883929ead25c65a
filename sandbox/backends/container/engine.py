"""Blocking calls to the Docker engine (docker-py): create, start, talk to, kill and remove
sandbox containers. Everything here runs in worker threads, never on the event loop."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import docker
import docker.errors as de
from docker.types import LogConfig, Ulimit

from sandbox.backends.container.channel import (
    ChannelClosed,
    ChannelTimeout,
    ProtocolError,
    RunnerChannel,
    StreamError,
)
from sandbox.backends.container.outcome import (
    ContainerSignals,
    RunnerStartError,
    checked_result_frame,
)
from sandbox.backends.container.tools import ForgedFrame, RelayStopped, ToolBridge
from sandbox.core.limits import Limits
from sandbox.core.output import OutputCapture, OutputLimitExceeded, StreamName

Runtime = Literal["runc", "runsc"]

OWNER_LABEL = "dev.sandbox.owner"
OWNER = "sandbox-server"
SCOPE_LABEL = "dev.sandbox.scope"
INSTANCE_LABEL = "dev.sandbox.instance"

WORKDIR = "/workspace"
SANDBOX_USER = "10001:10001"
READY_TIMEOUT_S = 30.0
# After a run ends without a frame: how long to wait for the container's exit status.
EXIT_WAIT_S = 5
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
    def of(cls, limits: Limits, *, image: str, runtime: Runtime) -> Shape:
        return cls(
            image=image,
            runtime=runtime,
            memory_bytes=limits.memory_bytes,
            cpu_millis=limits.cpu_millis,
            pids=limits.pids,
            disk_bytes=limits.disk_bytes,
        )


@dataclass(eq=False)
class Container:
    """A started container whose runner waits for its job on `channel`."""

    id: str
    shape: Shape
    channel: RunnerChannel

    def looks_alive(self) -> bool:
        return self.channel.looks_alive()


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
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "ulimits": ulimits,
        "ipc_mode": "private",
        "init": True,  # tini as pid 1 reaps what a fork bomb leaves
        "runtime": shape.runtime,
        # No log driver: runaway output must not land on the host's disk. attach still works.
        "log_config": LogConfig(type="none"),
    }


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

    def launch(self, shape: Shape, *, max_line_bytes: int) -> Container:
        """Creates, attaches and starts a container, and waits for its runner's ready frame."""
        api = self.client().api
        created = api.create_container(
            shape.image,
            stdin_open=True,
            tty=False,
            user=SANDBOX_USER,
            working_dir=WORKDIR,
            hostname="sandbox",
            network_disabled=True,
            labels=self.labels,
            host_config=api.create_host_config(**host_config_args(shape)),
        )
        container_id: str = created["Id"]
        channel: RunnerChannel | None = None
        try:
            attach = api.attach_socket(
                container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            channel = RunnerChannel(attach, max_line_bytes=max_line_bytes)
            api.start(container_id)
            try:
                frame = channel.read_frame(time.monotonic() + READY_TIMEOUT_S)
            except (ChannelClosed, ChannelTimeout, ProtocolError, StreamError) as exc:
                why = channel.diagnostics.decode("utf-8", "replace").strip()[-500:]
                raise RunnerStartError(
                    f"the runner did not start ({type(exc).__name__}) {why}".strip()
                ) from exc
            if frame["t"] != "ready":
                raise RunnerStartError(str(frame.get("message") or frame)[-500:])
            return Container(id=container_id, shape=shape, channel=channel)
        except BaseException:
            if channel is not None:
                channel.close()
            self.remove(container_id)
            raise

    def execute(
        self,
        container: Container,
        job: dict[str, Any],
        capture: OutputCapture,
        signals: ContainerSignals,
        tools: ToolBridge | None = None,
    ) -> None:
        """Sends `job` and collects frames until its result, the deadline or the runner's
        end; fills `signals`. With `tools`, answers the runner's call frames through it;
        the time a call waits for its answer (the runner blocked, reading) does not count
        against the wall-time budget. Kills the container when a cap is hit, the code
        writes to the channel (garbage, a forged call, fatal or result frame), the engine's stream
        breaks or the run is stopped. Errors talking to the engine propagate."""
        channel = container.channel
        started = time.monotonic()
        deadline = started + signals.limits.wall_time_s
        try:
            channel.send(job)
            while True:
                frame = channel.read_frame(deadline)
                kind = frame["t"]
                if kind == "o":
                    stream: StreamName = "stderr" if frame.get("s") == "stderr" else "stdout"
                    capture(stream, str(frame.get("d", "")))
                elif kind == "call" and tools is not None:
                    asked = time.monotonic()
                    try:
                        reply = tools.answer(frame)
                    finally:
                        waited = time.monotonic() - asked
                        deadline += waited
                        signals.tool_wait_s += waited
                    channel.send(reply)
                elif kind == "result":
                    signals.frame = checked_result_frame(frame)
                    break
                elif kind == "fatal":
                    # The runner reports its own set-up failures before "ready" (launch()
                    # turns those into RunnerStartError); once it runs the job, only the
                    # code can make one appear: written to the channel, or caused by
                    # reading the host's replies off it. A retry runs the same code.
                    said = str(frame.get("message") or "").strip().splitlines() or [""]
                    raise ForgedFrame(f"a fatal frame in the middle of the run: {said[0][:200]!r}")
        except OutputLimitExceeded:
            signals.output_exceeded = True
            self._stop(container)
        except ChannelTimeout:
            signals.host_timed_out = True
            self._stop(container)
        except ProtocolError as exc:
            signals.protocol_error = str(exc)
            self._stop(container)
        except StreamError as exc:
            signals.stream_error = str(exc)
            self._stop(container)
        except ForgedFrame as exc:
            signals.forged_frame = str(exc)
            self._stop(container)
        except RelayStopped:
            signals.relay_stopped = True
            self._stop(container)
        except (ChannelClosed, ConnectionError):
            pass  # the container ended; its state says how
        finally:
            signals.elapsed_s = time.monotonic() - started - signals.tool_wait_s
        stopped = signals.host_timed_out or signals.output_exceeded or signals.relay_stopped
        if signals.frame is None and not stopped:
            self._read_exit(container.id, signals)

    def _read_exit(self, container_id: str, signals: ContainerSignals) -> None:
        api = self.client().api
        try:
            api.wait(container_id, timeout=EXIT_WAIT_S)
        except de.NotFound:
            return  # removed from outside: the status is lost
        except (de.APIError, OSError):
            self.kill(container_id)  # still running after closing its output: stop it
        try:
            state = api.inspect_container(container_id)["State"]
        except de.NotFound:
            return
        signals.oom_killed = bool(state.get("OOMKilled"))
        if not state.get("Running"):
            signals.exit_code = int(state.get("ExitCode", 0))

    def _stop(self, container: Container) -> None:
        """Kills a container mid-run. Its channel is closed first: the engine does not
        finish a kill while it still has the container's output to hand us, and we no
        longer read it (a kill of a container still writing waited for the client's
        30 s timeout)."""
        container.channel.close()
        self.kill(container.id)

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
