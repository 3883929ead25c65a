"""After classify: one audit record and the metrics for every request, finished or refused.
The edge calls `record()` once per RPC; the request path only builds a dict, the audit
writer thread does the rest."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import uuid
from typing import Any

from sandbox.audit.log import AuditLog, now_iso
from sandbox.core.plan import Plan
from sandbox.core.request import Request
from sandbox.errors import RequestError
from sandbox.metrics import Metrics
from sandbox_client.protocol.models import ExecutionResult

# A failure message in the log is for humans skimming it; the kind is what queries use.
_MESSAGE_CHARS = 500


class Recorder:
    def __init__(self, audit: AuditLog | None = None, metrics: Metrics | None = None) -> None:
        self.audit = audit
        self.metrics = metrics

    def record(
        self,
        method: str,
        *,
        tenant: str,
        request: Request | None = None,
        plan: Plan | None = None,
        result: ExecutionResult | None = None,
        error: RequestError | None = None,
        session_id: str = "",
        policy_name: str = "",
    ) -> concurrent.futures.Future[None] | None:
        """Records one RPC; returns a future to await when the log is synchronous.
        `request` is set for the RPCs that run code (and CreateSession), `plan` once the
        core planned it, `result` or `error` for how it ended."""
        if self.metrics is not None:
            if result is not None:
                backend = result.backend.value if result.backend else "none"
                kind = result.failure.kind.value if result.failure else "OK"
                self.metrics.executed(backend, kind, tenant, result.usage.wall_ms / 1000)
            elif error is not None:
                self.metrics.refused.labels(error.kind.value, error.status.name, tenant).inc()
        if self.audit is None:
            return None
        policy = plan.policy if plan is not None else None
        record: dict[str, Any] = {
            "time": now_iso(),
            "method": method,
            "tenant": tenant,
            "request_id": result.execution_id
            if result is not None and result.execution_id
            else "req_" + uuid.uuid4().hex,
            "policy": policy.name if policy else (request.policy if request else policy_name),
            "policy_digest": policy.digest if policy else "",
            "session_id": session_id or (request.session_id if request else ""),
        }
        if request is not None and request.method != "CreateSession":
            record.update(
                idempotency_key=request.idempotency_key,
                code_sha256="sha256:"
                + hashlib.sha256(request.code.encode("utf-8", "surrogatepass")).hexdigest(),
                limits=dataclasses.asdict(plan.limits) if plan is not None else None,
            )
            if policy is None or policy.audit_code == "full":
                record["code"] = request.code
        if result is not None:
            failure = result.failure
            record.update(
                backend=result.backend.value if result.backend else "",
                fallback_from=result.fallback_from.value if result.fallback_from else "",
                kind=failure.kind.value if failure else "OK",
                message=failure.message[:_MESSAGE_CHARS] if failure else "",
                usage=result.usage.model_dump(mode="json", exclude_none=True),
                replayed=result.replayed,
            )
            if method == "Run":
                # Both backends stop a tool run's clock while it waits for an answer: its
                # usage.wall_ms is the code's own time, not the call's.
                record["wall_excludes_tool_waits"] = True
        else:
            record.update(
                backend=plan.steps[0].value if plan is not None and error is None else "",
                kind=error.kind.value if error is not None else "OK",
                message=error.message[:_MESSAGE_CHARS] if error is not None else "",
            )
            if error is not None:
                # The taxonomy's kind, and the gRPC status that tells refusals of one
                # kind apart (UNAUTHENTICATED, NOT_FOUND, FAILED_PRECONDITION, ...).
                record["grpc_code"] = error.status.name
                if request is not None:
                    record["field"] = error.field
        if self.metrics is not None:
            self.metrics.audit_records.inc()
        return self.audit.submit(record)
