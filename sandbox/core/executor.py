"""Runs requests: plan (core.plan), at most once per idempotency key (durable), on the
planned backends in order, and a result stamped with its id and policy. Sessions are
opened and closed here too. Knows nothing of gRPC; the edge records what it returns.

Every result leaves through `_finished`, which stamps it and bounds it (`bounded`): each
field the code influences is clipped so that the result always fits one message of the
server's size (`max_message_bytes`). An exception out of a backend is not a refusal: it
becomes a classified result (SANDBOX_CRASH, see durability.unexpected_failure).

Every method takes a Trace that it fills with the plan as soon as there is one, so the
edge can record the policy and limits of a request whether it finished or was refused."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace

import structlog

from sandbox.access.tenants import Access
from sandbox.backends.base import ExecutionBackend, RunSpec
from sandbox.backends.outcome_parts import CODE_FILENAME
from sandbox.backends.tools import CheckpointMismatch
from sandbox.core import plan as planning
from sandbox.core.advice import ModuleCatalog, with_module_advice
from sandbox.core.output import OutputSink
from sandbox.core.plan import Plan
from sandbox.core.request import Request
from sandbox.core.sessions import SessionEntry, SessionRegistry, TenantQuota
from sandbox.core.shadow import Sample, ShadowChecker
from sandbox.durable.durability import Durability, unexpected_failure
from sandbox.durable.journal import Entry
from sandbox.durable.tool_host import ToolRelay
from sandbox.errors import RequestError, Unavailable
from sandbox.policy.checker import StaticChecker
from sandbox.policy.model import PolicyRegistry
from sandbox_client.protocol.models import Backend, ExecutionResult, Failure, FailureKind, Frame

# The server's default gRPC message size (ServerSettings.max_message_bytes).
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024

log = structlog.get_logger("sandbox.executor")


@dataclass
class Trace:
    """What the core decided about one request, for the edge's record."""

    plan: Plan | None = None


class Executor:
    def __init__(
        self,
        *,
        policies: PolicyRegistry,
        backends: Mapping[Backend, ExecutionBackend],
        sessions: SessionRegistry,
        access: Access | None = None,
        journal: Durability | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        checker: StaticChecker | None = None,
        modules: ModuleCatalog | None = None,
    ) -> None:
        self.policies = policies  # replaced whole by the reloader
        self.backends = dict(backends)
        self.sessions = sessions
        self.access = access or Access()
        self.journal = journal
        self.max_message_bytes = max_message_bytes
        # The policy's static checks run in its processes; None: on the loop (tests only).
        self.checker = checker
        # The container images' contents, for advice on a module the code lacks.
        self.modules = modules
        # Re-runs a sample of AUTO's Monty successes in a container (set by the server
        # when it has one; policies choose the rate).
        self.shadow: ShadowChecker | None = None
        self._available = frozenset(self.backends)

    async def plan(self, request: Request, trace: Trace) -> Plan:
        context = planning.Context(
            self.policies, self.access, self.sessions, self._available, checker=self.checker
        )
        trace.plan = await planning.plan(request, context)
        return trace.plan

    # -- Execute, ExecuteStream ----------------------------------------------------------

    async def execute(
        self, request: Request, trace: Trace, on_output: OutputSink | None = None
    ) -> ExecutionResult:
        """Runs `request` (a repeat of a keyed one gets the recorded result)."""
        if self.journal is not None and request.idempotency_key:
            return await self.journal.once(
                request, lambda _entry: self._execute(request, trace, on_output)
            )
        return await self._execute(request, trace, on_output)

    async def _execute(
        self, request: Request, trace: Trace, on_output: OutputSink | None
    ) -> ExecutionResult:
        plan = await self.plan(request, trace)
        spec = run_spec(request, plan, on_output)
        try:
            if plan.refusal is not None:
                result = plan.refusal
            elif plan.session is not None:
                result = await plan.session.backend.run(spec, plan.session.handle)
                self.sessions.discard_if_dead(plan.session)
            else:
                result = await self._run_steps(plan, spec)
        except RequestError:
            raise
        except Exception as exc:
            result = unexpected_failure(exc)
        result = self._finished(await self._advised(result, plan, request), plan, request)
        if self.shadow is not None and _shadowable(request, plan, result):
            self.shadow.offer(
                Sample(
                    spec=replace(spec, on_output=None),
                    monty=result,
                    execution_id=result.execution_id,
                    policy=plan.policy.name,
                    keep_code=plan.policy.audit_code == "full",
                ),
                plan.policy.shadow_sample_rate,
            )
        # Successes are counted by metrics and the audit log; a log line each would cost
        # more than a short run itself.
        (log.info if result.failure else log.debug)(
            "executed",
            execution_id=result.execution_id,
            backend=result.backend,
            kind=result.failure.kind if result.failure else None,
            wall_ms=result.usage.wall_ms,
            session_id=request.session_id or None,
        )
        return result

    async def _run_steps(self, plan: Plan, spec: RunSpec) -> ExecutionResult:
        first, *rest = plan.steps
        # With a step to follow, the first reports what it may have got wrong as
        # UNSUPPORTED (Monty: a known divergence's error, a time limit hit being slower).
        result = await self.backends[first].run(replace(spec, fallback_follows=bool(rest)))
        for step in rest:
            if not _moves_on(result):
                break
            reason = result.failure.message if result.failure else ""
            log.info("fallback", reason=reason)
            result = await self.backends[step].run(spec)
            result = _moved(result, first, reason)
        if plan.fallback_from is not None:
            result = _moved(result, plan.fallback_from, plan.fallback_reason)
        return result

    # -- Run (tool runs) -------------------------------------------------------------------

    async def run_tools(
        self,
        request: Request,
        trace: Trace,
        relay: ToolRelay,
        on_output: OutputSink | None = None,
    ) -> ExecutionResult:
        """Runs (or resumes, or replays) a tool run. Every answer is journaled: a run whose
        server or client died resumes under the same key, from its checkpoint in Monty,
        replayed from the start in a container (calls already answered are answered
        from the journal, not by the tools again). AUTO moves to a container only when
        Monty says UNSUPPORTED before any tool was called."""
        journal = self.journal
        if journal is None:
            raise Unavailable("tool runs need the journal, which is off on this server")
        if not request.idempotency_key:
            request = replace(request, idempotency_key="run_" + uuid.uuid4().hex)

        async def run(entry: Entry) -> ExecutionResult:
            plan = await self.plan(request, trace)
            if plan.refusal is not None:
                return self._finished(plan.refusal, plan, request)
            host = journal.host(
                entry, relay, max_call_bytes=self.max_message_bytes - _RESERVED_BYTES
            )
            try:
                resume = journal.resume_point(entry)
                spec = replace(
                    run_spec(request, plan, on_output),
                    tools={t.name: t.is_async for t in request.tools or ()},
                    seed=entry.pinned.seed,
                    resume=resume,
                    mounts=(),  # tool runs never see host directories
                )
                first, *rest = plan.steps
                result = await self.backends[first].run_tools(spec, host)
                for step in rest:
                    # Only code that called no tool moves: a container starts it again.
                    if not _moves_on(result) or host.calls or resume is not None:
                        break
                    reason = result.failure.message if result.failure else ""
                    log.info("fallback", reason=reason)
                    result = await self.backends[step].run_tools(spec, host)
                    result = _moved(result, first, reason)
                if plan.fallback_from is not None:
                    result = _moved(result, plan.fallback_from, plan.fallback_reason)
            except CheckpointMismatch as exc:
                result = _corrupt(str(exc), plan.steps[0])
            except RequestError:
                raise
            except Exception as exc:
                # The entry keeps its answers (Durability.once): the retry resumes.
                result = unexpected_failure(exc)
            return self._finished(await self._advised(result, plan, request), plan, request)

        return await journal.once(request, run, resumable=True)

    # -- sessions --------------------------------------------------------------------------

    async def create_session(self, request: Request, trace: Trace) -> SessionEntry:
        context = planning.Context(self.policies, self.access, self.sessions, self._available)
        policy = planning.policy_for(request.tenant, request.policy, context)
        kind = Backend.MONTY if request.backend in (None, Backend.AUTO) else request.backend
        assert kind is not None
        planning.backend_allowed(kind, policy, self._available)
        limits = policy.limits(request.limits)
        if kind is Backend.CONTAINER:
            planning.check_container_minimums(limits)
        trace.plan = Plan(
            execution_id="", policy=policy, limits=limits, steps=(kind,), session=None
        )
        tenant = self.access.tenant(request.tenant)
        quota = (
            TenantQuota(sessions=tenant.max_sessions, memory_bytes=tenant.session_memory_bytes)
            if tenant is not None
            else None
        )
        return await self.sessions.create(
            self.backends[kind], policy, limits, tenant=request.tenant, quota=quota
        )

    async def close_session(self, session_id: str, tenant: str) -> None:
        await self.sessions.close(session_id, tenant=tenant)

    async def _advised(
        self, result: ExecutionResult, plan: Plan, request: Request
    ) -> ExecutionResult:
        if self.modules is None or result.failure is None:
            return result
        return await with_module_advice(
            result,
            tenant=request.tenant,
            policy=plan.policy,
            policies=self.policies,
            access=self.access,
            catalog=self.modules,
        )

    def _finished(self, result: ExecutionResult, plan: Plan, request: Request) -> ExecutionResult:
        """Every result on its way out: stamped, and bounded to the wire."""
        return bounded(_stamped(result, plan, request), self.max_message_bytes)


def run_spec(request: Request, plan: Plan, on_output: OutputSink | None) -> RunSpec:
    """What a backend is asked to run for `request` as planned."""
    policy = plan.policy
    return RunSpec(
        code=request.code,
        limits=plan.limits,
        inputs=request.inputs,
        stdin=request.stdin,
        on_output=on_output,
        image=policy.container_image,
        runtime=policy.container_runtime,
        mounts=tuple((m.host_path, m.guest_path, m.mode == "ro") for m in policy.mounts),
        denied_imports=policy.denied_imports,
    )


def _shadowable(request: Request, plan: Plan, result: ExecutionResult) -> bool:
    """Whether `result` is one of AUTO's Monty successes a shadow check may re-run: a
    plain run (not a session's), answered by Monty, under a policy that samples."""
    return (
        plan.policy.shadow_sample_rate > 0
        and result.ok
        and result.backend is Backend.MONTY
        and plan.session is None
        and request.backend in (None, Backend.AUTO)
        and not result.replayed
    )


def _moves_on(result: ExecutionResult) -> bool:
    """Whether the next planned backend gets the code: only when this one cannot run it."""
    return result.failure is not None and result.failure.kind is FailureKind.UNSUPPORTED


def _moved(result: ExecutionResult, source: Backend, reason: str) -> ExecutionResult:
    """`result` of a run moved from `source`, saying why."""
    return result.model_copy(update={"fallback_from": source, "fallback_reason": reason})


def _stamped(result: ExecutionResult, plan: Plan, request: Request) -> ExecutionResult:
    update: dict[str, object] = {
        "execution_id": plan.execution_id,
        "policy_name": plan.policy.name,
        "policy_digest": plan.policy.digest,
        "session_id": request.session_id,
        "failure": _named(result.failure, request.filename),
    }
    if plan.fidelity_warning and not result.fidelity_warning and result.backend is Backend.MONTY:
        update["fidelity_warning"] = plan.fidelity_warning
    return result.model_copy(update=update)


def _named(failure: Failure | None, filename: str) -> Failure | None:
    """`failure` with the code's own frames (both backends call its file CODE_FILENAME)
    under the name the request gave it."""
    if failure is None or filename == CODE_FILENAME or not failure.frames:
        return failure
    frames = tuple(
        f.model_copy(update={"filename": filename}) if f.filename == CODE_FILENAME else f
        for f in failure.frames
    )
    return failure.model_copy(update={"frames": frames})


def _corrupt(message: str, backend: Backend) -> ExecutionResult:
    return ExecutionResult.failed(
        Failure.of(
            FailureKind.CORRUPT_STATE,
            f"{message}; the run was discarded and a retry starts it afresh "
            "(tools already called will be called again)",
        ),
        backend=backend,
    )


# -- bounding a result to the wire ---------------------------------------------------------

# What a failure carries at most, field by field: every one of them the code can fill
# (an exception's message and type, its traceback's names and source lines, a denied
# call's arguments in details). Together well inside _RESERVED_BYTES.
MAX_MESSAGE_CHARS = 2000
MAX_NAME_CHARS = 200  # exception_type, a frame's filename and function_name
MAX_SOURCE_CHARS = 500
MAX_FRAMES = 50
MAX_DETAILS = 20
MAX_DETAIL_KEY_CHARS = 100
MAX_DETAIL_CHARS = 1000
# What a message keeps for everything but the output (stdout, stderr, result_json): ids,
# policy, usage, the bounded failure, and the framing of it all.
_RESERVED_BYTES = 256 * 1024


def bounded(result: ExecutionResult, max_bytes: int) -> ExecutionResult:
    """`result` with every field the code influences clipped so it fits a `max_bytes`
    message. The failure's text keeps its head (the first line names what happened), its
    traceback the outermost frame and the innermost ones (where it happened; details
    count the frames left out), a long source line the part its columns point at. The
    output already fits the policy's output cap; when that cap is more than a message
    holds, stdout and stderr are truncated to fit and a result_json that does not fit is
    dropped, as OUTPUT_LIMIT (a run that had failed for another reason keeps that)."""
    update: dict[str, object] = {}
    failure = result.failure
    if failure is not None and _too_big(failure):
        failure = _bounded_failure(failure)
        update["failure"] = failure
    room = max(0, max_bytes - _RESERVED_BYTES)
    texts = {name: getattr(result, name) or "" for name in ("stdout", "stderr", "result_json")}
    if 4 * sum(len(t) for t in texts.values()) > room:  # UTF-8: at most 4 bytes a char
        sizes = {name: _utf8_len(text) for name, text in texts.items()}
        if sum(sizes.values()) > room:
            if sizes["result_json"]:
                update["result_json"] = None
            err_room = min(sizes["stderr"], max(room // 2, room - sizes["stdout"]))
            for name, share in (("stdout", room - err_room), ("stderr", err_room)):
                if sizes[name] > share:
                    update[name] = _clip_utf8(texts[name], share)
                    update[f"{name}_truncated"] = True
            if failure is None:
                update.update(
                    ok=False,
                    exit_code=1,
                    failure=Failure.of(
                        FailureKind.OUTPUT_LIMIT,
                        f"the output exceeded what one response carries ({room} bytes of "
                        "stdout, stderr and result together); it was truncated there",
                        details={"limit": "max_message_bytes", "limit_value": str(max_bytes)},
                    ),
                )
    return result.model_copy(update=update) if update else result


def _too_big(failure: Failure) -> bool:
    return (
        len(failure.message) > MAX_MESSAGE_CHARS
        or len(failure.exception_type) > MAX_NAME_CHARS
        or len(failure.frames) > MAX_FRAMES
        or len(failure.details) > MAX_DETAILS
        or any(
            len(k) > MAX_DETAIL_KEY_CHARS or len(v) > MAX_DETAIL_CHARS
            for k, v in failure.details.items()
        )
        or any(
            len(f.source_line) > MAX_SOURCE_CHARS
            or len(f.function_name) > MAX_NAME_CHARS
            or len(f.filename) > MAX_NAME_CHARS
            for f in failure.frames
        )
    )


def _bounded_failure(failure: Failure) -> Failure:
    frames = failure.frames
    details = dict(list(failure.details.items())[:MAX_DETAILS])
    if len(frames) > MAX_FRAMES:
        frames = frames[:1] + frames[-(MAX_FRAMES - 1) :]
        details["frames_omitted"] = str(len(failure.frames) - MAX_FRAMES)
    return failure.model_copy(
        update={
            "message": _clip(failure.message, MAX_MESSAGE_CHARS),
            "exception_type": _clip(failure.exception_type, MAX_NAME_CHARS),
            "frames": tuple(_bounded_frame(f) for f in frames),
            "details": {
                _clip(k, MAX_DETAIL_KEY_CHARS): _clip(v, MAX_DETAIL_CHARS)
                for k, v in details.items()
            },
        }
    )


def _bounded_frame(frame: Frame) -> Frame:
    source = frame.source_line
    if len(source) > MAX_SOURCE_CHARS:
        # The head, or (the error further along) a window from a little before its column.
        keep = MAX_SOURCE_CHARS - 6
        column = frame.column - 1
        start = 0 if column < keep // 2 else min(column - keep // 5, len(source) - keep)
        end = start + keep
        source = ("..." if start else "") + source[start:end] + ("..." if end < len(source) else "")
    return frame.model_copy(
        update={
            "filename": _clip(frame.filename, MAX_NAME_CHARS),
            "function_name": _clip(frame.function_name, MAX_NAME_CHARS),
            "source_line": source,
        }
    )


def _clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _clip_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore")
