"""Exactly-once replies and durable tool runs, on top of a JournalStore.

- `Durability.once()` runs a request at most once per (tenant, idempotency key): a repeat
  gets the recorded result (marked `replayed`), a different request under the same key is
  INVALID_REQUEST, and a repeat that arrives while the first is running waits for it.
- `Durability.run_tools()` runs code that calls the client's tools, in Monty or a
  container. Every answer is journaled. Monty's interpreter is checkpointed after each
  answer (HMAC-signed with the server's key) and a run whose server or client died
  resumes from its checkpoint; a container run is replayed from the start instead. Either
  way calls already answered are answered from the journal, not by the tools again.

Only one server process may use a journal file: a `running` entry left by another owner
is taken to be orphaned by a dead process. A networked store for several replicas would
need leases instead."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from sandbox.backends.container.backend import ContainerBackend
from sandbox.backends.monty.backend import MontyBackend
from sandbox.backends.monty.tools import ToolRunSpec, run_with_tools
from sandbox.backends.tools import CheckpointMismatch, ToolCallRequest, ToolHost, ToolReply
from sandbox.backends.values import value_to_json
from sandbox.config import JournalSettings
from sandbox.core.executor import ExecuteCall, Executor, check_size, policy_violation, run_spec
from sandbox.core.output import OutputSink
from sandbox.durable.journal import (
    Checkpoint,
    Entry,
    JournalStore,
    Pinned,
    SqliteJournal,
    ToolAnswer,
)
from sandbox.errors import RequestError, invalid
from sandbox_client import Backend, ExecutionResult, Failure, FailureKind

log = structlog.get_logger("sandbox.durable")

# Failures worth running again: forget the entry so the retry really runs. A tool run
# that crashed keeps its checkpoint, so its retry resumes instead of calling tools again.
_RESUMABLE = frozenset(
    {FailureKind.SANDBOX_CRASH, FailureKind.INFRA_UNAVAILABLE, FailureKind.CANCELLED}
)
MAX_TOOLS = 64


@dataclass(frozen=True, kw_only=True)
class ToolDecl:
    name: str
    is_async: bool = False
    json_schema: str = ""
    stub: str = ""


class ToolRelay(Protocol):
    """One client connection's side of a tool run (the gRPC stream, in production)."""

    def call(self, request: ToolCallRequest) -> Awaitable[ToolReply]:
        """Sends the call to the client; resolves with its answer."""
        ...


def load_checkpoint_key(configured: str | None, key_file: Path) -> bytes:
    """The HMAC key for checkpoints: the configured secret, else `key_file`, else a new
    random key written there (mode 0600) on first start. Never logged."""
    if configured:
        return configured.encode()
    try:
        return key_file.read_bytes().strip()
    except FileNotFoundError:
        pass
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        return key_file.read_bytes().strip()
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    return key


def build_journal(settings: JournalSettings) -> Durability | None:
    """The server's journal, or None when `settings.enabled` is off."""
    if not settings.enabled:
        return None
    configured = settings.checkpoint_key.get_secret_value() if settings.checkpoint_key else None
    key = load_checkpoint_key(
        configured, settings.checkpoint_key_file or settings.state_dir / "checkpoint.key"
    )
    store = SqliteJournal(settings.path or settings.state_dir / "journal.sqlite3")
    return Durability(store, checkpoint_key=key, retention_s=settings.retention_s)


def checkpoint_mac(key: bytes, tenant: str, idempotency_key: str, seq: int, blob: bytes) -> bytes:
    """Binds a checkpoint to its execution and position, so neither a flipped bit nor a
    checkpoint copied from another run or an earlier call passes."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in (tenant.encode(), idempotency_key.encode(), str(seq).encode()):
        mac.update(len(part).to_bytes(4, "big") + part)
    mac.update(blob)
    return mac.digest()


def request_digest(call: ExecuteCall, tools: tuple[ToolDecl, ...] | None = None) -> str:
    """What makes two requests under one key "the same": everything the code's outcome
    depends on. A tool run and a plain execution never match."""
    canonical = {
        "code": call.code,
        "backend": call.backend.value if call.backend else "",
        "policy": call.policy,
        "inputs": json.dumps(call.inputs, sort_keys=True, default=repr),
        "stdin": call.stdin,
        "limits": asdict(call.limits),
        "session_id": call.session_id,
        "tools": None if tools is None else sorted((t.name, t.is_async) for t in tools),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


class _Slot:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Durability:
    def __init__(
        self,
        store: JournalStore,
        *,
        checkpoint_key: bytes,
        retention_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.retention_s = retention_s
        self._key = checkpoint_key
        self._clock = clock
        self.owner = uuid.uuid4().hex  # this server process
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._purger: asyncio.Task[None] | None = None

    # -- exactly once ------------------------------------------------------------------

    async def once(
        self,
        call: ExecuteCall,
        run: Callable[[Entry], Awaitable[ExecutionResult]],
        *,
        digest: str | None = None,
        resumable: bool = False,
    ) -> ExecutionResult:
        """`run(entry)` at most once per key; see the module docstring. With `resumable`
        the entry survives cancellation and crashes, so the next request resumes it.

        A plain execution is claimed in memory only (the key's lock) and written once, with
        its result: a `running` row would buy nothing, since a run that dies with its
        server is run again by the retry either way, and it would cost a write."""
        tenant, key = _tenant(call), call.idempotency_key
        digest = digest or request_digest(call)
        async with self._exclusive(tenant, key):
            if resumable:
                entry, created = self.store.claim(
                    tenant, key, digest=digest, owner=self.owner, pinned=_pin(), now=self._clock()
                )
                stored = True
            else:
                found = self.store.get(tenant, key)
                entry = found or _unstored(tenant, key, digest, self.owner, self._clock())
                stored = found is not None
                created = not stored
            if entry.digest != digest:
                raise invalid(
                    f"idempotency key {key!r} was already used for a different request",
                    field="idempotency_key",
                )
            if entry.state == "done" and entry.result_json is not None:
                recorded = ExecutionResult.model_validate_json(entry.result_json)
                log.info("replayed", execution_id=recorded.execution_id)
                return recorded.model_copy(update={"replayed": True})
            if not created:
                # Its runner is gone: a dead process, or a stream that was cancelled.
                log.info("taking over", state=entry.state, checkpoint=entry.checkpoint is not None)
                self.store.take_over(tenant, key, owner=self.owner, now=self._clock())
            try:
                result = await run(entry)
            except asyncio.CancelledError:
                if stored and not resumable:
                    self.store.forget(tenant, key)
                raise
            except BaseException:
                if stored:
                    self.store.forget(tenant, key)
                raise
            failure = result.failure
            if failure is not None and failure.retryable:
                if stored and not (resumable and failure.kind in _RESUMABLE):
                    self.store.forget(tenant, key)
            elif stored:
                self.store.finish(
                    tenant, key, result_json=result.model_dump_json(), now=self._clock()
                )
            else:
                self.store.record_done(
                    entry, result_json=result.model_dump_json(), now=self._clock()
                )
            return result

    @contextlib.asynccontextmanager
    async def _exclusive(self, tenant: str, key: str) -> AsyncIterator[None]:
        scope = (tenant, key)
        slot = self._slots.get(scope)
        if slot is None:
            slot = self._slots[scope] = _Slot()
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[scope]

    # -- retention ---------------------------------------------------------------------

    def purge(self) -> int:
        """Deletes entries untouched for longer than the retention period."""
        removed = self.store.purge(before=self._clock() - self.retention_s)
        if removed:
            log.info("journal purged", entries=removed)
        return removed

    def start(self) -> None:
        """Purges now and then every tenth of the retention period (at most 5 minutes)."""
        interval = max(1.0, min(self.retention_s / 10, 300.0))

        async def purge_forever() -> None:
            while True:
                self.purge()
                await asyncio.sleep(interval)

        self._purger = asyncio.create_task(purge_forever())

    async def stop(self) -> None:
        purger, self._purger = self._purger, None
        if purger is not None:
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
        self.store.close()

    # -- tool runs ---------------------------------------------------------------------

    async def run_tools(
        self,
        executor: Executor,
        call: ExecuteCall,
        tools: tuple[ToolDecl, ...],
        relay: ToolRelay,
        on_output: OutputSink | None = None,
    ) -> ExecutionResult:
        """Runs (or resumes, or replays) a tool run; request problems raise RequestError.

        MONTY resumes from the last checkpoint. CONTAINER cannot be checkpointed: a
        resumed run starts the code again and calls already answered are answered from
        the journal (same number and tool, else CORRUPT_STATE), so only later calls reach
        the client; `random` is seeded from the journal, but the container's clock is
        its own, so code whose calls depend on the time may not repeat itself. AUTO is
        Monty first, then a container when Monty reports the code UNSUPPORTED before
        any tool was called (as Execute falls back)."""
        _check_tools(tools)
        if call.session_id:
            raise invalid("tool runs do not take a session", field="session_id")
        requested = call.backend or Backend.AUTO
        policy = executor.policies.get(call.policy)
        check_size(call, policy)
        if requested not in policy.backends:
            raise RequestError(
                FailureKind.POLICY_VIOLATION,
                f"policy '{policy.name}' does not allow backend {requested.value}",
                field="backend",
            )
        monty = executor.backends.get(Backend.MONTY)
        container = executor.backends.get(Backend.CONTAINER)
        if requested is Backend.CONTAINER and container is None:
            raise RequestError(
                FailureKind.INFRA_UNAVAILABLE,
                "the container backend is not enabled on this server",
                field="backend",
                retry_after_ms=0,
            )
        can_fall_back = (
            requested is Backend.AUTO
            and policy.allow_fallback
            and container is not None
            and Backend.CONTAINER in policy.backends
        )
        limits = policy.limits(call.limits)
        if not call.idempotency_key:
            call = _with_key(call, "run_" + uuid.uuid4().hex)
        tenant = _tenant(call)
        declared = {t.name: t.is_async for t in tools}

        async def in_monty(entry: Entry, host: ToolHost) -> ExecutionResult:
            assert isinstance(monty, MontyBackend)
            checkpoint = entry.checkpoint
            if checkpoint is not None and not hmac.compare_digest(
                checkpoint.mac,
                checkpoint_mac(
                    self._key, tenant, call.idempotency_key, checkpoint.seq, checkpoint.blob
                ),
            ):
                log.warning("checkpoint failed its integrity check", seq=checkpoint.seq)
                return _corrupt("the run's checkpoint failed its integrity check", Backend.MONTY)
            spec = ToolRunSpec(
                code=call.code,
                limits=limits,
                tools=declared,
                inputs=call.inputs,
                stdin=call.stdin,
                seed=entry.pinned.seed,
                resume_blob=checkpoint.blob if checkpoint else None,
                resume_seq=checkpoint.seq if checkpoint else 0,
                resume_output=checkpoint.output if checkpoint else {},
                on_output=on_output,
            )
            try:
                return await run_with_tools(monty, spec, host)
            except CheckpointMismatch as exc:
                return _corrupt(str(exc), Backend.MONTY)

        async def in_container(entry: Entry, host: ToolHost) -> ExecutionResult:
            assert isinstance(container, ContainerBackend)
            violation = policy_violation(call.code, policy, Backend.CONTAINER)
            if violation is not None:
                return violation
            spec = run_spec(call, policy, limits, on_output)  # mounts: Monty only
            try:
                return await container.run_tools(
                    spec, tools=declared, seed=entry.pinned.seed, host=host
                )
            except CheckpointMismatch as exc:
                return _corrupt(str(exc), Backend.CONTAINER)

        async def run(entry: Entry) -> ExecutionResult:
            host = _JournalHost(self, tenant, call.idempotency_key, entry.answers, relay)
            if requested is Backend.CONTAINER:
                result = await in_container(entry, host)
            else:
                result = await in_auto_or_monty(entry, host)
            return result.model_copy(
                update={
                    "execution_id": "exe_" + uuid.uuid4().hex,
                    "policy_name": policy.name,
                    "policy_digest": policy.digest,
                }
            )

        async def in_auto_or_monty(entry: Entry, host: _JournalHost) -> ExecutionResult:
            if can_fall_back:
                violation = policy_violation(call.code, policy, Backend.CONTAINER)
                if violation is not None:
                    return violation
            violation = policy_violation(call.code, policy, Backend.MONTY)
            if violation is None:
                counted = _CountingHost(host)
                result = await in_monty(entry, counted)
                failure = result.failure
                unsupported = failure is not None and failure.kind is FailureKind.UNSUPPORTED
                # Only code that called no tool moves: a container starts it again.
                called = counted.calls > 0 or entry.checkpoint is not None
                if not (can_fall_back and unsupported) or called:
                    return result
                log.info("fallback", reason=failure.message if failure else "")
            elif not can_fall_back:
                return violation  # denied in Monty only (e.g. `import os`)
            result = await in_container(entry, host)
            return result.model_copy(update={"fallback_from": Backend.MONTY})

        return await self.once(call, run, digest=request_digest(call, tools), resumable=True)

    def _sign(self, tenant: str, key: str, seq: int, blob: bytes) -> bytes:
        return checkpoint_mac(self._key, tenant, key, seq, blob)


class _CountingHost:
    """A ToolHost that counts the calls the code made through it."""

    def __init__(self, inner: _JournalHost) -> None:
        self._inner = inner
        self.calls = 0

    def ask(self, call: ToolCallRequest) -> Awaitable[ToolReply]:
        self.calls += 1
        return self._inner.ask(call)

    def clock(self, n: int, name: str, read: Callable[[], Any]) -> Any:
        return self._inner.clock(n, name, read)

    async def checkpoint(self, seq: int, blob: bytes, output: dict[str, Any]) -> None:
        await self._inner.checkpoint(seq, blob, output)


class _JournalHost:
    """The ToolHost of one run: answers a call from the journal when it was answered
    before (a resume), else relays it to the client and journals the answer."""

    def __init__(
        self,
        durability: Durability,
        tenant: str,
        key: str,
        recorded: Mapping[int, ToolAnswer],
        relay: ToolRelay,
    ) -> None:
        self._d = durability
        self._tenant = tenant
        self._key = key
        self._recorded = recorded
        self._relay = relay

    def ask(self, call: ToolCallRequest) -> Awaitable[ToolReply]:
        recorded = self._recorded.get(call.seq)
        if recorded is not None:
            if recorded.name != call.name:
                raise CheckpointMismatch(
                    f"the resumed run called {call.name!r} as call {call.seq}; "
                    f"the journal recorded {recorded.name!r}"
                )
            if (recorded.args_json, recorded.kwargs_json) != (
                args_json(call.args),
                kwargs_json(call.kwargs),
            ):
                # A replay (container runs) that passes other arguments, e.g. ones that
                # depend on the clock: it still gets the answer the journal holds.
                log.warning("replayed call's arguments differ", seq=call.seq, tool=call.name)
            done: asyncio.Future[ToolReply] = asyncio.get_running_loop().create_future()
            done.set_result(reply_from_json(recorded.answer_json))
            return done
        return asyncio.ensure_future(self._relay_and_record(call))

    async def _relay_and_record(self, call: ToolCallRequest) -> ToolReply:
        reply = await self._relay.call(call)
        answer = ToolAnswer(
            seq=call.seq,
            name=call.name,
            args_json=args_json(call.args),
            kwargs_json=kwargs_json(call.kwargs),
            answer_json=reply_to_json(reply),
        )
        self._d.store.record_answer(self._tenant, self._key, answer, now=self._d._clock())
        return reply

    def clock(self, n: int, name: str, read: Callable[[], Any]) -> Any:
        # Clock readings share the journal with tool answers, at negative positions.
        recorded = self._recorded.get(-n)
        if recorded is not None:
            if recorded.name != name:
                raise CheckpointMismatch(
                    f"the resumed run read {name!r} as clock reading {n}; "
                    f"the journal recorded {recorded.name!r}"
                )
            return json.loads(recorded.answer_json)
        value = read()
        reading = ToolAnswer(
            seq=-n, name=name, args_json="[]", kwargs_json="{}", answer_json=json.dumps(value)
        )
        self._d.store.record_answer(self._tenant, self._key, reading, now=self._d._clock())
        return value

    async def checkpoint(self, seq: int, blob: bytes, output: dict[str, Any]) -> None:
        mac = self._d._sign(self._tenant, self._key, seq, blob)
        self._d.store.save_checkpoint(
            self._tenant,
            self._key,
            Checkpoint(seq=seq, blob=blob, mac=mac, output=output),
            now=self._d._clock(),
        )


def args_json(args: tuple[Any, ...]) -> str:
    return "[" + ", ".join(value_to_json(a) for a in args) + "]"


def kwargs_json(kwargs: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)}: {value_to_json(v)}" for k, v in kwargs.items()) + "}"


def reply_to_json(reply: ToolReply) -> str:
    if reply.error_type:
        error = {"type": reply.error_type, "message": reply.error_message, "kind": reply.error_kind}
        return json.dumps({"error": error})
    return json.dumps({"value": reply.value})


def reply_from_json(text: str) -> ToolReply:
    data = json.loads(text)
    if "error" in data:
        error = data["error"]
        return ToolReply(
            error_type=error["type"], error_message=error["message"], error_kind=error["kind"]
        )
    return ToolReply(value=data["value"])


def _check_tools(tools: tuple[ToolDecl, ...]) -> None:
    if len(tools) > MAX_TOOLS:
        raise invalid(f"at most {MAX_TOOLS} tools may be declared", field="tools")
    seen: set[str] = set()
    for tool in tools:
        if not tool.name.isidentifier() or len(tool.name) > 128:
            raise invalid(f"tool name {tool.name!r} is not a Python identifier", field="tools")
        if tool.name in seen:
            raise invalid(f"tool {tool.name!r} is declared twice", field="tools")
        seen.add(tool.name)


def _tenant(call: ExecuteCall) -> str:
    # Tenants arrive with authentication (issue 4); until then every caller is "".
    return str(getattr(call, "tenant", "") or "")


def _with_key(call: ExecuteCall, key: str) -> ExecuteCall:
    import dataclasses

    return dataclasses.replace(call, idempotency_key=key)


def _unstored(tenant: str, key: str, digest: str, owner: str, now: float) -> Entry:
    """The entry of a plain execution claimed in memory only (see Durability.once)."""
    return Entry(
        tenant=tenant,
        key=key,
        digest=digest,
        state="running",
        owner=owner,
        pinned=_pin(),
        created_at=now,
        updated_at=now,
    )


def _pin() -> Pinned:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return Pinned(time_iso=now.isoformat(), seed=secrets.randbits(62))


def _corrupt(message: str, backend: Backend) -> ExecutionResult:
    return ExecutionResult.failed(
        Failure.of(
            FailureKind.CORRUPT_STATE,
            f"{message}; the run was discarded and a retry starts it afresh "
            "(tools already called will be called again)",
        ),
        backend=backend,
    )
