"""Prometheus metrics for operators, on their own registry (so several servers can live in
one process, as in tests) and their own HTTP port."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from sandbox.config import MetricsSettings

# Execution wall time buckets, in seconds: Monty runs take about a millisecond, containers
# hundreds, and a policy may allow minutes.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.executions = Counter(
            "sandbox_executions",
            "Executions finished, by backend, outcome kind (OK when the code succeeded) and tenant",
            ("backend", "kind", "tenant"),
            registry=r,
        )
        self.duration = Histogram(
            "sandbox_execution_duration_seconds",
            "Wall time of finished executions, by backend",
            ("backend",),
            buckets=_BUCKETS,
            registry=r,
        )
        self.refused = Counter(
            "sandbox_requests_refused",
            "Requests refused before anything ran, by failure kind (THROTTLED, "
            "POLICY_VIOLATION, INVALID_REQUEST, ...), gRPC status and tenant",
            ("kind", "grpc_code", "tenant"),
            registry=r,
        )
        self.inflight = Gauge("sandbox_executions_in_flight", "Executions running now", registry=r)
        self.audit_records = Counter(
            "sandbox_audit_records", "Audit records queued for writing", registry=r
        )
        self.policy_reloads = Counter(
            "sandbox_policy_reloads",
            "Policy and tenant reloads, by result (ok, failed)",
            ("result",),
            registry=r,
        )
        self.shadow_runs = Counter(
            "sandbox_fidelity_shadow_runs",
            "AUTO's Monty successes sampled for a container re-run, by outcome: matched, "
            "mismatched (Monty and CPython answered differently), inconclusive, dropped",
            ("outcome",),
            registry=r,
        )
        self._http: Any = None
        self.port = 0
        self._executed: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def executed(self, backend: str, kind: str, tenant: str, seconds: float) -> None:
        """Counts one finished execution (labels() resolved once per label set: it is
        on every request's path)."""
        key = (backend, kind, tenant)
        children = self._executed.get(key)
        if children is None:
            children = (self.executions.labels(*key), self.duration.labels(backend))
            self._executed[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def shadowed(self, outcome: str) -> None:
        """Counts one shadow check's outcome (sandbox/core/shadow.py)."""
        self.shadow_runs.labels(outcome).inc()

    def serve(self, settings: MetricsSettings) -> int:
        """Starts the /metrics HTTP endpoint (`settings.port` must be set; 0 picks a free
        one); returns the bound port."""
        if settings.port is None:
            raise ValueError("metrics.port is not set")
        server, _thread = start_http_server(
            settings.port, addr=settings.host, registry=self.registry
        )
        self._http = server
        self.port = int(server.server_port)
        return self.port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
