"""The audit log: one JSON line per request, hash-chained, appended by one writer thread.

Each record holds `seq` (1, 2, ...), `prev` (the previous record's hash; GENESIS for the
first) and `hash` = sha256 of the record's canonical JSON without `hash`. Editing a
record breaks its hash; removing or reordering records breaks `seq` and `prev`. Files
rotate by size (audit-000001.jsonl, audit-000002.jsonl, ...) and the chain runs on across
them. Only the tail cannot be proven complete: cutting off the last records leaves a
shorter, valid chain (ship the files elsewhere, or compare the last hash, to catch that).

The request path only puts a dict on a queue; hashing, writing and fsync happen on the
writer thread. With fsync="always" the request waits for its record's fsync (one fsync
covers every record queued meanwhile); "batch" fsyncs each batch without making anyone
wait; "never" leaves flushing to the OS (still safe against a process crash)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import hashlib
import json
import os
import queue
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from sandbox.config import AuditSettings

log = structlog.get_logger("sandbox.audit")

FsyncPolicy = Literal["always", "batch", "never"]
GENESIS = "sha256:" + "0" * 64
FILE_PATTERN = re.compile(r"^audit-(\d{6,})\.jsonl$")
_MAX_BATCH = 2048
# How much of the newest file start-up reads to find where the chain stands.
_TAIL_BYTES = 16 * 1024 * 1024


def canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(body: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical(body)).hexdigest()


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def log_files(directory: Path) -> list[Path]:
    """The directory's audit files, oldest first."""
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := FILE_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


_Item = tuple[dict[str, Any], "concurrent.futures.Future[None] | None"]
# Queued by flush(): written as nothing, its future done once what came before is.
_FLUSH: dict[str, Any] = {}


class AuditLog:
    def __init__(self, settings: AuditSettings) -> None:
        """Writes to `settings.dir`, which must be set (None means no audit log)."""
        if settings.dir is None:
            raise ValueError("an AuditLog needs a directory (audit.dir)")
        self.directory = settings.dir
        self.fsync: FsyncPolicy = settings.fsync
        self.max_file_bytes = settings.max_file_bytes
        self.seq = 0
        self.last_hash = GENESIS
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._file: Any = None
        self._index = 0
        self._rotate_requested = False
        self.written = 0

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        files = log_files(self.directory)
        fresh_file = True
        if files:
            last = files[-1]
            self._index = int(FILE_PATTERN.match(last.name).group(1))  # type: ignore[union-attr]
            seq, prev, clean = _tail_state(last)
            if seq is None:
                # The newest file holds no whole record; the chain stands where the one
                # before it ends.
                for older in reversed(files[:-1]):
                    seq, prev, _ = _tail_state(older)
                    if seq is not None:
                        break
            self.seq, self.last_hash = seq or 0, prev or GENESIS
            if not clean:
                log.warning(
                    "audit log ends in an incomplete record (a crash mid-write); "
                    "continuing in a new file",
                    file=str(last),
                )
            else:
                fresh_file = False
        if fresh_file:
            self._index += 1
        path = self.directory / f"audit-{self._index:06d}.jsonl"
        self._file = open(path, "ab")  # noqa: SIM115 (closed by the writer thread)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Writes everything queued, then stops the writer."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None

    def rotate(self) -> None:
        """Starts a new file after the records queued so far; the chain runs on."""
        self._rotate_requested = True

    # -- appending ------------------------------------------------------------------

    def submit(self, record: dict[str, Any]) -> concurrent.futures.Future[None] | None:
        """Queues `record`; with fsync="always" returns a future done once it is on disk."""
        future: concurrent.futures.Future[None] | None = (
            concurrent.futures.Future() if self.fsync == "always" else None
        )
        self._queue.put((record, future))
        return future

    async def append(self, record: dict[str, Any]) -> None:
        future = self.submit(record)
        if future is not None:
            await asyncio.wrap_future(future)

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            batch: list[_Item] = []
            if item is None:
                stop = True
            else:
                batch.append(item)
            while len(batch) < _MAX_BATCH and not stop:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    batch.append(more)
            try:
                self._write(batch)
            except Exception as exc:  # a full disk must not kill the thread silently
                log.error("audit write failed", error=f"{type(exc).__name__}: {exc}")
                for _, future in batch:
                    if future is not None and not future.done():
                        future.set_exception(exc)
        self._file.close()

    def _write(self, batch: list[_Item]) -> None:
        if batch:
            lines = []
            for record, _ in batch:
                if record is _FLUSH:
                    continue
                body = {**record, "seq": self.seq + 1, "prev": self.last_hash}
                digest = record_hash(body)
                body["hash"] = digest
                lines.append(canonical(body) + b"\n")
                self.seq += 1
                self.last_hash = digest
            self._file.write(b"".join(lines))
            self._file.flush()
            if self.fsync != "never" or any(r is _FLUSH for r, _ in batch):
                os.fsync(self._file.fileno())
            self.written += len(lines)
            for _, future in batch:
                if future is not None:
                    future.set_result(None)
        if self._rotate_requested or self._file.tell() >= self.max_file_bytes:
            self._rotate_requested = False
            self._file.close()
            self._index += 1
            self._file = open(self.directory / f"audit-{self._index:06d}.jsonl", "ab")  # noqa: SIM115

    def flush(self, timeout_s: float = 30.0) -> None:
        """Blocks until every record queued before this call is written and fsynced."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.put((_FLUSH, future))
        future.result(timeout_s)


def _tail_state(path: Path) -> tuple[int | None, str | None, bool]:
    """(seq, hash) of the last whole record in `path`, and whether the file ends cleanly."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - _TAIL_BYTES))
        data = f.read()
    clean = data.endswith(b"\n") or not data
    for raw in reversed(data.split(b"\n")[:-1] if data else []):
        try:
            record = json.loads(raw)
            return int(record["seq"]), str(record["hash"]), clean
        except (ValueError, KeyError, TypeError):
            continue
    return None, None, clean


# -- verification and queries ---------------------------------------------------------


@dataclass
class VerifyReport:
    records: int = 0
    files: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str = ""
    error: str = ""  # the first bad record, "" when the chain holds
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error


def expand(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        out += log_files(path) if path.is_dir() else [path]
    return out


def _lines(path: Path) -> tuple[list[bytes], bytes]:
    data = path.read_bytes()
    parts = data.split(b"\n")
    return parts[:-1], parts[-1]


def verify(paths: Sequence[Path]) -> VerifyReport:
    """Checks the chain through `paths` in order (directories expand to their files).
    Stops at the first bad record and names it: file, line, and the seq expected there."""
    report = VerifyReport()
    prev: str | None = None
    expected: int | None = None
    files = expand(paths)
    for path in files:
        report.files += 1
        lines, tail = _lines(path)
        for number, raw in enumerate(lines, start=1):
            where = f"{path}:{number}"
            want = f"record seq {expected}" if expected is not None else "record"
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
                stored = record.pop("hash")
                seq, linked = int(record["seq"]), record["prev"]
            except (ValueError, KeyError, TypeError) as exc:
                report.error = f"{where}: {want}: unreadable ({type(exc).__name__}: {exc})"
                return report
            if record_hash(record) != stored:
                report.error = f"{where}: {want}: content does not match its hash (edited)"
                return report
            if expected is not None and seq != expected:
                how = "removed" if seq > expected else "reordered or duplicated"
                report.error = f"{where}: {want}: found seq {seq} instead (records {how})"
                return report
            if prev is not None and linked != prev:
                report.error = f"{where}: {want}: prev does not match the record before it"
                return report
            if prev is None and seq == 1 and linked != GENESIS:
                report.error = f"{where}: record seq 1: prev is not the genesis value"
                return report
            if report.first_seq is None:
                report.first_seq = seq
                if seq != 1:
                    report.warnings.append(
                        f"{where}: the chain starts at seq {seq}; give the earlier files "
                        "too to check what came before"
                    )
            prev, expected = stored, seq + 1
            report.records += 1
            report.last_seq, report.last_hash = seq, stored
        if tail:
            report.warnings.append(
                f"{path}:{len(lines) + 1}: incomplete last record ({len(tail)} bytes, as a "
                "crash mid-write leaves); not counted"
            )
    if not files:
        report.error = "no audit files given"
    return report


def records(paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
    """Every whole, parsable record in `paths`, in order."""
    for path in expand(paths):
        lines, _ = _lines(path)
        for raw in lines:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def _instant(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def query(
    paths: Sequence[Path],
    *,
    tenant: str | None = None,
    kind: str | None = None,
    policy: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Records matching every filter given; times are ISO 8601 (UTC unless stated)."""
    start = _instant(since) if since else None
    end = _instant(until) if until else None
    for record in records(paths):
        if tenant is not None and record.get("tenant") != tenant:
            continue
        if kind is not None and str(record.get("kind", "")).upper() != kind.upper():
            continue
        if policy is not None and record.get("policy") != policy:
            continue
        if start or end:
            when = _instant(str(record.get("time", "")))
            if (start and when < start) or (end and when >= end):
                continue
        yield record
