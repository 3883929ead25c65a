"""Exactly-once replies and the journal side of durable tool runs, over a JournalStore.

- `Durability.once()` runs a request at most once per (tenant, idempotency key): a repeat
  gets the recorded result (marked `replayed`), a different request under the same key is
  INVALID_REQUEST, and a repeat that arrives while the first is running waits for it.
- A tool run (core.executor) is `once(..., resumable=True)`: its entry survives crashes
  and cancellation, `host()` answers the code's calls from the journal or the client
  (tool_host.py), and `resume_point()` hands back its last checkpoint once its HMAC
  (checkpoints.py) checks out.
- Everything replayed is signed with the checkpoint key, bound to (tenant, key) and its
  position (checkpoints.journal_mac): the recorded result, the digest and pinned values,
  every tool answer and clock reading, the checkpoint and its output. A recorded result
  that fails its MAC is never replayed: the entry is discarded and the request refused
  as CORRUPT_STATE (a retry runs afresh); a tool run's answers, pinned values and
  checkpoint are checked by `resume_point()` before the run uses any.
- Whatever fails in the server while a run runs, the caller gets a classified result:
  an exception that is not a refusal (RequestError) becomes SANDBOX_CRASH (retryable,
  logged with its traceback), and a tool run's entry is kept with its answers, so the
  retry resumes it and no answered tool is called again. A tool run left to resume
  (SANDBOX_CRASH, INFRA_UNAVAILABLE) comes back without an execution id: it has not
  ended, and the client keeps an idempotency key only until an execution answers to it.

With SqliteJournal only one server process may use a journal file: a `running` entry
left by another owner is taken to be orphaned by a dead process. With a SharedJournalStore
(PostgreSQL, several replicas) every keyed request is claimed in the store, a plain
execution too, and an entry another replica runs is waited for (woken by the store) and
taken over only once its lease lapsed; every write is fenced on the lease's generation,
so a replica paused past its lease ends its attempt with LeaseLost (INFRA_UNAVAILABLE,
retryable) and its successor's record stands."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from sandbox.access.tenants import SharedQuotas
from sandbox.backends.base import Resume
from sandbox.backends.tools import CheckpointMismatch
from sandbox.config import JournalSettings
from sandbox.core.request import Request
from sandbox.durable.checkpoints import (
    answer_mac,
    checkpoint_mac,
    journal_mac,
    load_checkpoint_key,
)
from sandbox.durable.journal import (
    Entry,
    JournalStore,
    Pinned,
    SharedJournalStore,
    SqliteJournal,
)
from sandbox.durable.tool_host import DEFAULT_MAX_CALL_BYTES, JournalHost, ToolRelay
from sandbox.errors import CorruptState, InvalidRequest, LeaseLost, RequestError, Unavailable
from sandbox.tasks import cancel_and_wait
from sandbox_client.protocol.models import ExecutionResult, Failure, FailureKind

log = structlog.get_logger("sandbox.durable")

# Failures worth running again: forget the entry so the retry really runs. A tool run
# that crashed keeps its checkpoint, so its retry resumes instead of calling tools again.
_RESUMABLE = frozenset(
    {FailureKind.SANDBOX_CRASH, FailureKind.INFRA_UNAVAILABLE, FailureKind.CANCELLED}
)


def unexpected_failure(exc: Exception) -> ExecutionResult:
    """The result of a run the server itself failed (a bug, not the code's doing): logged
    with its traceback, SANDBOX_CRASH to the caller, retryable. Call it from `except`."""
    log.exception("the server failed running a request", error=type(exc).__name__)
    return ExecutionResult.failed(
        Failure.of(
            FailureKind.SANDBOX_CRASH,
            f"the server failed while running this ({type(exc).__name__}); nothing in the "
            "code is known to have caused it, and a retry under the same idempotency key "
            "resumes a tool run without calling answered tools again",
        )
    )


def build_journal(settings: JournalSettings) -> Durability | None:
    """The server's journal, or None when `settings.enabled` is off."""
    if not settings.enabled:
        return None
    configured = settings.checkpoint_key.get_secret_value() if settings.checkpoint_key else None
    key = load_checkpoint_key(
        configured, settings.checkpoint_key_file or settings.state_dir / "checkpoint.key"
    )
    store: JournalStore
    if settings.url is not None:
        from sandbox.durable.postgres import PostgresJournal  # psycopg: the postgres extra

        store = PostgresJournal(settings.url.get_secret_value(), lease_s=settings.lease_s)
    else:
        store = SqliteJournal(settings.path or settings.state_dir / "journal.sqlite3")
    return Durability(store, checkpoint_key=key, retention_s=settings.retention_s)


def request_digest(request: Request) -> str:
    """What makes two requests under one key "the same": everything the code's outcome
    depends on. A tool run and a plain execution never match."""
    tools = request.tools
    canonical = {
        "code": request.code,
        "backend": request.backend.value if request.backend else "",
        "policy": request.policy,
        "inputs": json.dumps(request.inputs, sort_keys=True, default=repr),
        "stdin": request.stdin,
        "limits": request.limits.model_dump(),
        "session_id": request.session_id,
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
        self.shared = store if isinstance(store, SharedJournalStore) else None
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._purger: asyncio.Task[None] | None = None

    # -- exactly once ------------------------------------------------------------------

    async def once(
        self,
        request: Request,
        run: Callable[[Entry], Awaitable[ExecutionResult]],
        *,
        resumable: bool = False,
    ) -> ExecutionResult:
        """`run(entry)` at most once per key; see the module docstring. With `resumable`
        the entry survives cancellation and crashes, so the next request resumes it.

        A plain execution is claimed in memory only (the key's lock) and written once, with
        its result: a `running` row would buy nothing, since a run that dies with its
        server is run again by the retry either way, and it would cost a write. With a
        shared store it is claimed in the store: the key's lock is only this replica's."""
        tenant, key = request.tenant, request.idempotency_key
        digest = request_digest(request)
        async with self._exclusive(tenant, key):
            pinned = _pin()
            fresh = Entry.running(
                tenant,
                key,
                digest=digest,
                owner=self.owner,
                pinned=pinned,
                now=self._clock(),
                mac=self._entry_mac(tenant, key, digest, pinned),
            )
            if self.shared is not None:
                entry, created = await self._claim_shared(self.shared, fresh)
                stored = True
            elif resumable:
                entry, created = self.store.claim(fresh)
                stored = True
            else:
                found = self.store.get(tenant, key)
                entry = found or fresh  # a plain execution is claimed in memory only
                stored = found is not None
                created = not stored
            if entry.digest != digest:
                raise InvalidRequest(
                    f"idempotency key {key!r} was already used for a different request",
                    field="idempotency_key",
                )
            if entry.state == "done" and entry.result_json is not None:
                self._check_result(entry)
                recorded = ExecutionResult.model_validate_json(entry.result_json)
                log.info("replayed", execution_id=recorded.execution_id)
                return recorded.model_copy(update={"replayed": True})
            if not created and self.shared is None:
                # Its runner is gone: a dead process, or a stream that was cancelled.
                log.info("taking over", state=entry.state, checkpoint=entry.checkpoint is not None)
                self.store.take_over(tenant, key, owner=self.owner, now=self._clock())
            try:
                return await self._run_and_settle(entry, run, stored=stored, resumable=resumable)
            finally:
                if self.shared is not None:
                    self.shared.release(tenant, key)  # nothing once finished or forgotten

    async def _run_and_settle(
        self,
        entry: Entry,
        run: Callable[[Entry], Awaitable[ExecutionResult]],
        *,
        stored: bool,
        resumable: bool,
    ) -> ExecutionResult:
        tenant, key = entry.tenant, entry.key
        try:
            result = await run(entry)
        except asyncio.CancelledError:
            if stored and not resumable:
                self.store.forget(tenant, key)
            raise
        except RequestError:
            # A refusal: this attempt ran nothing. A tool run's entry stays if it holds
            # answers (from an earlier attempt): forgetting them would call those tools
            # again.
            if stored and not (resumable and self._holds_answers(tenant, key)):
                self.store.forget(tenant, key)
            raise
        except Exception as exc:
            result = unexpected_failure(exc)  # SANDBOX_CRASH: kept below, if resumable
        try:
            return self._settle(entry, result, stored=stored, resumable=resumable)
        except LeaseLost:
            raise  # another replica's record stands; the retry gets it
        except Exception:
            # The result stands; only its record is missing. A tool run's entry still
            # holds its answers, so a retry resumes it instead of calling tools again.
            log.exception("the journal could not record a result", state=entry.state)
            return result

    async def _claim_shared(self, store: SharedJournalStore, fresh: Entry) -> tuple[Entry, bool]:
        """The entry for fresh's key, claimed or taken over by this replica, or done. An
        entry another replica holds is waited for: until it is finished or forgotten
        (the store wakes us) or its lease lapses, whichever is first."""
        tenant, key = fresh.tenant, fresh.key
        while True:
            watch = store.watch(tenant, key)
            try:
                entry, created = store.claim(fresh)
                if created or entry.state == "done" or entry.digest != fresh.digest:
                    return entry, created  # a different request is refused by the caller
                taken = store.try_take_over(tenant, key, owner=self.owner, now=self._clock())
                if taken is not None:
                    log.info(
                        "taking over", state=taken.state, checkpoint=taken.checkpoint is not None
                    )
                    return taken, False
                await watch.wait(store.lease_s)
            finally:
                watch.close()

    def _settle(
        self, entry: Entry, result: ExecutionResult, *, stored: bool, resumable: bool
    ) -> ExecutionResult:
        """Records how the run ended: forgets a run worth retrying, keeps a tool run to
        resume, writes a final result."""
        tenant, key = entry.tenant, entry.key
        failure = result.failure
        if failure is not None and failure.retryable:
            if not (resumable and failure.kind in _RESUMABLE):
                if stored:
                    self.store.forget(tenant, key)
            elif result.execution_id:
                # The run is not over: its entry waits for the retry to resume it. No
                # execution answered to the key yet, so the client keeps the key (a
                # client moves to a new key once an execution id came back).
                result = result.model_copy(update={"execution_id": ""})
        elif stored:
            text = result.model_dump_json()
            self.store.finish(
                tenant, key, result_json=text, now=self._clock(), mac=self._result_mac(entry, text)
            )
        else:
            text = result.model_dump_json()
            self.store.record_done(
                entry, result_json=text, now=self._clock(), mac=self._result_mac(entry, text)
            )
        return result

    def _holds_answers(self, tenant: str, key: str) -> bool:
        entry = self.store.get(tenant, key)
        return entry is not None and (bool(entry.answers) or entry.checkpoint is not None)

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

    def shared_quotas(self) -> SharedQuotas | None:
        """Tenants' quotas in the shared store, for Access.shared; None with SQLite."""
        if self.shared is None:
            return None
        from sandbox.durable.pg_quotas import PostgresQuotas
        from sandbox.durable.postgres import PostgresJournal

        if not isinstance(self.store, PostgresJournal):
            return None
        return PostgresQuotas(self.store, owner=self.owner)

    # -- tool runs ---------------------------------------------------------------------

    def host(
        self, entry: Entry, relay: ToolRelay, *, max_call_bytes: int = DEFAULT_MAX_CALL_BYTES
    ) -> JournalHost:
        """The ToolHost of the tool run `entry` is the record of; a call whose arguments
        encode to more than `max_call_bytes` is refused at the call (tool_host.py)."""
        return JournalHost(
            self.store,
            entry,
            relay,
            checkpoint_key=self._key,
            clock=self._clock,
            max_call_bytes=max_call_bytes,
        )

    def resume_point(self, entry: Entry) -> Resume | None:
        """Where the tool run `entry` is the record of resumes: its last checkpoint, if it
        has one. Checks first that the journal's record of it is the server's own: its
        digest and pinned values, every journaled answer and clock reading, and the
        checkpoint with its output; raises CheckpointMismatch at the first that fails its
        MAC, before the run uses any."""
        tenant, key = entry.tenant, entry.key
        if not hmac.compare_digest(
            entry.mac, self._entry_mac(tenant, key, entry.digest, entry.pinned)
        ):
            raise CheckpointMismatch(self._tampered(entry, "its digest and pinned values"))
        for answer in entry.answers.values():
            if not hmac.compare_digest(answer.mac, answer_mac(self._key, tenant, key, answer)):
                what = f"clock reading {-answer.seq}" if answer.seq < 0 else f"answer {answer.seq}"
                raise CheckpointMismatch(self._tampered(entry, what))
        checkpoint = entry.checkpoint
        if checkpoint is None:
            return None
        expected = checkpoint_mac(
            self._key, tenant, key, checkpoint.seq, checkpoint.blob, checkpoint.output
        )
        if not hmac.compare_digest(checkpoint.mac, expected):
            raise CheckpointMismatch(
                self._tampered(entry, f"its checkpoint after call {checkpoint.seq}")
            )
        return checkpoint

    # -- signatures ----------------------------------------------------------------------

    def _entry_mac(self, tenant: str, key: str, digest: str, pinned: Pinned) -> bytes:
        return journal_mac(
            self._key, tenant, key, "entry", 0, digest, pinned.time_iso, str(pinned.seed)
        )

    def _result_mac(self, entry: Entry, result_json: str) -> bytes:
        return journal_mac(
            self._key, entry.tenant, entry.key, "result", 0, entry.digest, result_json
        )

    def _check_result(self, entry: Entry) -> None:
        """Raises CorruptState, after discarding the entry, unless its recorded result is
        the server's own."""
        assert entry.result_json is not None
        if hmac.compare_digest(entry.result_mac, self._result_mac(entry, entry.result_json)):
            return
        self._tampered(entry, "its recorded result")
        if self.shared is not None:
            self.shared.forget_done(entry.tenant, entry.key)
        else:
            self.store.forget(entry.tenant, entry.key)
        raise CorruptState(
            "the journal's record of this request failed its integrity check, so it was not "
            "replayed; the record was discarded and a retry runs the request afresh"
        )

    def _tampered(self, entry: Entry, what: str) -> str:
        """Logs a record that failed its MAC; returns the reason to give."""
        log.warning(
            "journal entry failed its integrity check; not replayed",
            tenant=entry.tenant,
            key=entry.key[:64],
            field=what,
        )
        return f"the journal's record of the run ({what}) failed its integrity check"

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
                try:
                    self.purge()
                except Unavailable:  # a shared journal down: purge on the next round
                    log.warning("journal purge skipped: the journal is unreachable")
                await asyncio.sleep(interval)

        self._purger = asyncio.create_task(purge_forever())

    async def stop(self) -> None:
        purger, self._purger = self._purger, None
        await cancel_and_wait(purger)
        self.store.close()


def _pin() -> Pinned:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return Pinned(time_iso=now.isoformat(), seed=secrets.randbits(62))
