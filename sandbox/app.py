"""Assembles and runs the server: backends, executor, gRPC service, health, reflection."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Literal

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sandbox.access.reload import Reloader, load_policies, load_tenants
from sandbox.access.tenants import Access
from sandbox.audit.log import AuditLog
from sandbox.backends.base import ExecutionBackend
from sandbox.backends.container.backend import ContainerBackend
from sandbox.backends.container.engine import unavailable
from sandbox.backends.container.settings import ContainerSettings
from sandbox.backends.monty.backend import MontyBackend
from sandbox.config import Settings, TlsSettings
from sandbox.core.executor import Executor
from sandbox.core.recorder import Recorder
from sandbox.core.sessions import SessionRegistry
from sandbox.core.shadow import ShadowChecker
from sandbox.durable.durability import Durability, build_journal
from sandbox.edge.calls import Edge
from sandbox.edge.service import SandboxService, generic_handler
from sandbox.errors import ConfigError, Unavailable
from sandbox.metrics import Metrics
from sandbox.policy.checker import StaticChecker
from sandbox.tasks import cancel_and_wait
from sandbox_client import Backend
from sandbox_client.protocol.service import SERVICE_NAME

log = structlog.get_logger("sandbox.server")


def build_executor(settings: Settings, journal: Durability | None = None) -> Executor:
    """The core with its policies, tenants, backends (not started) and sessions."""
    policies, problems = load_policies(settings.policies)
    for problem in problems:
        if problem.severity == "error":
            log.error("policy file refused", problem=str(problem))
    backends: dict[Backend, ExecutionBackend] = {Backend.MONTY: MontyBackend(settings.monty)}
    containers = None
    if containers_on(settings.container):
        # The pool's containers are shaped for the default policy's limits.
        containers = ContainerBackend(settings.container, pool_limits=policies.get("").limits())
        backends[Backend.CONTAINER] = containers
    # Several replicas on one journal keep tenants' quotas there too.
    shared = journal.shared_quotas() if journal is not None else None
    return Executor(
        policies=policies,
        backends=backends,
        sessions=SessionRegistry(settings.sessions),
        access=Access(load_tenants(settings.tenants, policies), shared=shared),
        journal=journal,
        max_message_bytes=settings.server.max_message_bytes,
        checker=StaticChecker(),
        modules=containers,
    )


def containers_on(settings: ContainerSettings) -> bool:
    """Whether to serve containers: as configured, or for "auto" as this machine allows
    (an engine that answers, the image there), said in the log either way."""
    if settings.enabled != "auto":
        return settings.enabled
    problem = unavailable(settings.docker_host, settings.image)
    if problem is None:
        log.info("container backend on (auto): the engine answers", image=settings.image)
    else:
        log.info("container backend off (auto)", reason=problem)
    return problem is None


class SandboxServer:
    """One server instance. `start()` returns the bound port (useful with port 0)."""

    def __init__(self, settings: Settings) -> None:
        settings.check_bind()
        self.settings = settings
        self.metrics = Metrics()
        self.audit = (
            AuditLog(settings.audit, default_key_file=settings.journal.state_dir / "audit.key")
            if settings.audit.dir is not None
            else None
        )
        self.executor = build_executor(settings, journal=build_journal(settings.journal))
        self.access = self.executor.access
        container = self.executor.backends.get(Backend.CONTAINER)
        if isinstance(container, ContainerBackend):
            self.executor.shadow = ShadowChecker(
                container,
                state_dir=settings.journal.state_dir,
                count=self.metrics.shadowed,
                free_slot=container.has_free_slot,
            )
        settings.check_bind(has_credentials=self.access.required)
        warn_about_shares(
            settings, self.access, containers=Backend.CONTAINER in self.executor.backends
        )
        self.edge = Edge(self.access, Recorder(self.audit, self.metrics))
        self.reloader = Reloader(
            settings.policies, settings.tenants, holder=self.executor, metrics=self.metrics
        )
        self._watch: asyncio.Task[None] | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._expiry: asyncio.Task[None] | None = None
        self._journal_health: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        # Bound first: a port in use fails the start before any backend has started.
        server = self._listener()
        if self.audit is not None:
            self.audit.start()
        for backend in self.executor.backends.values():
            await backend.start()
        if self.executor.checker is not None:
            await self.executor.checker.start(wait=False)
        if self.executor.shadow is not None:
            self.executor.shadow.start()
        await server.start()
        journal = self.executor.journal
        if journal is not None and journal.shared is not None:
            # Sessions live in this process: their ids name it, and other replicas can
            # tell a caller that reached them where a session lives.
            self.executor.sessions.replica = journal.owner[:12]
            self.executor.sessions.locate = journal.shared.replica_address
            with contextlib.suppress(Unavailable):  # unreachable now: sessions say less
                address = f"{self.settings.server.host}:{self.port}"
                journal.shared.register_replica(journal.owner[:12], address)
        self._server = server
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._expiry = asyncio.create_task(self.executor.sessions.run_expiry())
        self._watch = asyncio.create_task(self.reloader.watch())
        if self.settings.metrics.port is not None:
            self.metrics.serve(self.settings.metrics)
        if self.executor.journal is not None:
            self.executor.journal.start()
            if self.executor.journal.shared is not None:
                self._journal_health = asyncio.create_task(self._follow_journal())
        backends = sorted(b.value for b in self.executor.backends)
        replica = self.executor.journal.owner if self.executor.journal is not None else ""
        host = self.settings.server.host
        log.info("serving", address=f"{host}:{self.port}", backends=backends, replica=replica)
        return self.port

    def _listener(self) -> grpc.aio.Server:
        limit = self.settings.server.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", int(self.settings.server.reuse_port)),
            ]
        )
        service = SandboxService(self.executor, self.edge, self.settings.batch)
        server.add_generic_rpc_handlers((generic_handler(service),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        host = self.settings.server.host
        port = self.settings.server.port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = bind(server, address, self.settings.tls)
        return server

    async def stop(self, grace_s: float = 5.0) -> None:
        await self._health.enter_graceful_shutdown()
        for task in (self._expiry, self._watch, self._journal_health):
            await cancel_and_wait(task)
        if self._server is not None:
            await self._server.stop(grace_s)
        await self.executor.sessions.close_all()
        if self.executor.shadow is not None:
            await self.executor.shadow.stop()
        for backend in self.executor.backends.values():
            await backend.stop()
        if self.executor.checker is not None:
            await self.executor.checker.stop()
        if self.executor.journal is not None:
            await self.executor.journal.stop()
        self.metrics.stop()
        if self.audit is not None:
            await asyncio.to_thread(self.audit.close)
        log.info("stopped")

    async def _follow_journal(self, every_s: float = 0.5) -> None:
        """Health follows a shared journal: NOT_SERVING while it does not answer (its own
        probe decides), so a load balancer sends keyed work to replicas that can take it."""
        assert self.executor.journal is not None and self.executor.journal.shared is not None
        shared = self.executor.journal.shared
        serving = True
        while True:
            reachable = shared.reachable()
            if reachable != serving:
                serving = reachable
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if serving
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ("", SERVICE_NAME):
                    await self._health.set(name, status)
                log.warning("health follows the journal", serving=serving)
            await asyncio.sleep(every_s)

    async def serve_forever(self) -> None:
        """Runs until SIGINT or SIGTERM, then drains in-flight calls and stops. The
        handlers are in place before start-up, so a signal that arrives while the
        server starts (or just after it says it serves) stops it the same way."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reloader.reload)
        await self.start()
        await stop.wait()
        await self.stop()


def warn_about_shares(settings: Settings, access: Access, *, containers: bool) -> None:
    """Logs each tenant whose quotas let it hold every Monty worker or container slot on
    its own (each execution holds one; each open Monty session holds a worker)."""
    if access.tenants is None:
        return
    workers = settings.monty.max_workers - min(
        settings.monty.warm_sessions, settings.monty.max_workers - 1
    )
    slots = settings.container.max_concurrency if containers else None
    for tenant in access.tenants.tenants.values():
        if tenant.max_concurrent + tenant.max_sessions >= workers:
            log.warning(
                "a tenant's quotas cover every Monty worker",
                tenant=tenant.name,
                max_concurrent=tenant.max_concurrent,
                max_sessions=tenant.max_sessions,
                workers=workers,
            )
        if slots is not None and tenant.max_concurrent >= slots:
            log.warning(
                "a tenant's quotas cover every container slot",
                tenant=tenant.name,
                max_concurrent=tenant.max_concurrent,
                slots=slots,
            )


def new_event_loop(kind: Literal["uvloop", "asyncio"]) -> asyncio.AbstractEventLoop:
    """The loop the server runs on (ServerSettings.event_loop)."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def bind(server: grpc.aio.Server, address: str, tls: TlsSettings) -> int:
    """Adds the listening port: TLS when a certificate is configured (mutual TLS when a
    client CA is), plaintext otherwise (loopback only, unless tenants hold API keys)."""
    try:
        if tls.cert_file is None or tls.key_file is None:
            return server.add_insecure_port(address)
        ca = tls.client_ca_file
        credentials = grpc.ssl_server_credentials(
            [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
            root_certificates=ca.read_bytes() if ca is not None else None,
            require_client_auth=ca is not None,
        )
        return server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc's "Failed to bind to address ..."
        raise ConfigError(
            f"cannot listen on {address}: the address is in use (another `sandbox serve`?) "
            f"or not this machine's ({exc})"
        ) from None
