"""After classify: one audit record and the metrics for every request, finished or refused.
The request path only builds a dict; the audit writer thread does the rest."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import uuid
from typing import TYPE_CHECKING, Any

from sandbox.audit.log import AuditLog, now_iso
from sandbox.core.limits import Limits
from sandbox.errors import RequestError
from sandbox.metrics import Metrics
from sandbox.policy.model import Policy
from sandbox_client import ExecutionResult

if TYPE_CHECKING:
    from sandbox.core.executor import ExecuteCall

# A failure message in the log is for humans skimming it; the kind is what queries use.
_MESSAGE_CHARS = 500


def error_kind(error: RequestError) -> str:
    return "UNAUTHENTICATED" if error.unauthenticated else error.kind.value


class Recorder:
    def __init__(self, audit: AuditLog | None = None, metrics: Metrics | None = None) -> None:
        self.audit = audit
        self.metrics = metrics

    def execution(
        self,
        call: ExecuteCall,
        *,
        policy: Policy | None,
        limits: Limits | None,
        result: ExecutionResult | None,
        error: RequestError | None,
        method: str = "Execute",
    ) -> concurrent.futures.Future[None] | None:
        """Records one Execute; returns a future to await when the log is synchronous."""
        tenant = call.tenant
        if self.metrics is not None:
            if result is not None:
                backend = result.backend.value if result.backend else "none"
                kind = result.failure.kind.value if result.failure else "OK"
                self.metrics.executed(backend, kind, tenant, result.usage.wall_ms / 1000)
            elif error is not None:
                self.metrics.refused.labels(error_kind(error), tenant).inc()
        if self.audit is None:
            return None
        record: dict[str, Any] = {
            "time": now_iso(),
            "method": method,
            "tenant": tenant,
            "request_id": result.execution_id
            if result and result.execution_id
            else "req_" + uuid.uuid4().hex,
            "idempotency_key": call.idempotency_key,
            "code_sha256": "sha256:"
            + hashlib.sha256(call.code.encode("utf-8", "surrogatepass")).hexdigest(),
            "policy": policy.name if policy else call.policy,
            "policy_digest": policy.digest if policy else "",
            "session_id": call.session_id,
            "limits": dataclasses.asdict(limits) if limits else None,
        }
        if policy is None or policy.audit_code == "full":
            record["code"] = call.code
        if result is not None:
            failure = result.failure
            record.update(
                backend=result.backend.value if result.backend else "",
                fallback_from=result.fallback_from.value if result.fallback_from else "",
                kind=failure.kind.value if failure else "OK",
                message=failure.message[:_MESSAGE_CHARS] if failure else "",
                usage=result.usage.model_dump(mode="json", exclude_none=True),
                replayed=bool(getattr(result, "replayed", False)),
            )
        elif error is not None:
            record.update(
                backend="",
                kind=error_kind(error),
                message=error.message[:_MESSAGE_CHARS],
                field=error.field,
            )
        return self._append(record)

    def event(
        self,
        method: str,
        *,
        tenant: str,
        session_id: str = "",
        policy: Policy | None = None,
        backend: str = "",
        error: RequestError | None = None,
        policy_name: str = "",
    ) -> concurrent.futures.Future[None] | None:
        """Records a request that is not an execution (sessions), or one refused at the
        edge before it became one (authentication, quotas)."""
        if self.metrics is not None and error is not None:
            self.metrics.refused.labels(error_kind(error), tenant).inc()
        if self.audit is None:
            return None
        record: dict[str, Any] = {
            "time": now_iso(),
            "method": method,
            "tenant": tenant,
            "request_id": "req_" + uuid.uuid4().hex,
            "policy": policy.name if policy else policy_name,
            "policy_digest": policy.digest if policy else "",
            "session_id": session_id,
            "backend": backend,
            "kind": error_kind(error) if error else "OK",
            "message": error.message[:_MESSAGE_CHARS] if error else "",
        }
        return self._append(record)

    def _append(self, record: dict[str, Any]) -> concurrent.futures.Future[None] | None:
        assert self.audit is not None
        if self.metrics is not None:
            self.metrics.audit_records.inc()
        return self.audit.submit(record)
