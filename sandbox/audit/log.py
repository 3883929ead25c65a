"""The audit log: one JSON line per request, hash-chained and signed, appended by one
writer thread.

Records. A request's record holds `seq` (1, 2, ...), `prev` (the hash of the line before
it; GENESIS for the first), `mac` = HMAC-SHA256 under the audit key of its canonical JSON
without `hash` and `mac`, and `hash` = sha256 of its canonical JSON without `hash` (so the
MAC is inside the chain). Anyone can check the links and hashes, which catch a changed
byte and a removed or reordered record; a holder of the key can also check the MACs,
which catch a record edited with every later hash recomputed. The server holds the key
and reviewers a copy: with HMAC a holder could forge too, so the key stays out of reach
of whoever the log watches.

Files. Files rotate by size (audit-000001.jsonl, audit-000002.jsonl, ...) and the chain
runs on across them. Every file after the first begins with a signed rotation record:
`rotation` (why: size, requested, restart, key, anchor, or a change found behind the
writer: replaced, deleted, truncated, appended), `detail`, `previous_file`, and
`after_seq` and `prev` naming the last record before it. A log whose oldest file starts
after seq 1 is therefore an error unless the reviewer states the start expected there
(older files archived). Before each batch the writer compares the path with the file it
holds open (device, inode, size): a file replaced (an editor, logrotate), deleted,
truncated or written by someone else is logged and the writer goes on in a new file whose
rotation record says what happened; verify then reports the records that went missing.

The anchor. The writer keeps the chain's head, signed, in the anchor file (dir/anchor.json
unless `anchor_file` says elsewhere): {seq, hash, file, time, mac}, overwritten in place
at most every 50 ms while records flow and at once on flush(), rotation and close.
Verify compares the log's end with it, so records cut off the end are found: exactly
after a clean stop, all but the last 50 ms after a crash (while the server runs, the
writer itself notices a file cut short). The head is also logged at start, at every
rotation and at close, for shipping. At start, if the files end before the anchor (cut
while the server was down), the writer goes on from the anchor's head in a new file, so
the loss stays visible.

The request path only puts a dict on a queue; signing, hashing, writing and fsync happen
on the writer thread. With fsync="always" the request waits for its record's fsync (one
fsync covers every record queued meanwhile); "batch" fsyncs each batch without making
anyone wait; "never" leaves flushing to the OS (still safe against a process crash)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import hashlib
import hmac
import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from sandbox.config import AuditSettings
from sandbox.durable.checkpoints import load_checkpoint_key
from sandbox.errors import ConfigError

log = structlog.get_logger("sandbox.audit")

FsyncPolicy = Literal["always", "batch", "never"]
GENESIS = "sha256:" + "0" * 64
FILE_PATTERN = re.compile(r"^audit-(\d{6,})\.jsonl$")
ANCHOR_NAME = "anchor.json"
_MAX_BATCH = 2048
# The anchor's size on disk: its JSON, padded.
_ANCHOR_BYTES = 512
# How far the anchor may lag the log (it costs the log's next fsync a second inode):
# written at most this often while records flow, and at once by flush(), rotation and close.
_ANCHOR_EVERY_S = 0.05
# How much of the newest file start-up reads to find where the chain stands.
_TAIL_BYTES = 16 * 1024 * 1024
# Rotation reasons that are routine; any other is reported by verify.
_ROUTINE = frozenset({"size", "requested"})


def canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(body: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical(body)).hexdigest()


def record_mac(key: bytes, body: Mapping[str, Any]) -> str:
    """The MAC of a record: HMAC-SHA256 of its canonical JSON without `hash` and `mac`."""
    return _mac(key, body, ("hash", "mac"))


def anchor_mac(key: bytes, anchor: Mapping[str, Any]) -> str:
    """The MAC of the anchor: of everything in it but `mac` (its `hash` is the head's)."""
    return _mac(key, anchor, ("mac",))


def _mac(key: bytes, body: Mapping[str, Any], without: tuple[str, ...]) -> str:
    unsigned = {k: v for k, v in body.items() if k not in without}
    return "hmac-sha256:" + hmac.new(key, canonical(unsigned), hashlib.sha256).hexdigest()


def _sealed(key: bytes, body: dict[str, Any]) -> tuple[bytes, str]:
    """`body` signed and hashed: its line, and its hash. The line is the canonical JSON
    that was hashed with `hash` added last (a reader parses it; order does not matter)."""
    body["mac"] = record_mac(key, body)
    hashed = canonical(body)
    digest = "sha256:" + hashlib.sha256(hashed).hexdigest()
    return hashed[:-1] + b',"hash":"' + digest.encode() + b'"}\n', digest


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _file_index(path: Path) -> int:
    match = FILE_PATTERN.match(path.name)
    return int(match.group(1)) if match else 0


def log_files(directory: Path) -> list[Path]:
    """The directory's audit files, oldest first."""
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := FILE_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def read_key(path: Path) -> bytes:
    """A key file as the writer reads it (surrounding whitespace dropped)."""
    key = path.read_bytes().strip()
    if not key:
        raise ConfigError(f"{path}: the audit key file is empty")
    return key


def read_anchor(path: Path) -> dict[str, Any]:
    """The anchor file's head; ValueError when it is not one."""
    anchor = json.loads(path.read_bytes())
    if not isinstance(anchor, dict):
        raise ValueError("not an object")
    if not isinstance(anchor.get("seq"), int) or not isinstance(anchor.get("hash"), str):
        raise ValueError("no seq and hash")
    return anchor


def _position(record: Mapping[str, Any]) -> int:
    """Where a line stands in the chain: a request's seq, a rotation's after_seq."""
    return int(record["after_seq"] if "rotation" in record else record["seq"])


_Item = tuple[dict[str, Any], "concurrent.futures.Future[None] | None"]
# Queued by flush(): written as nothing, its future done once what came before is.
_FLUSH: dict[str, Any] = {}


class AuditLog:
    def __init__(self, settings: AuditSettings, *, default_key_file: Path | None = None) -> None:
        """Writes to `settings.dir`, which must be set (None means no audit log). The key
        is `settings.key`, else `settings.key_file`, else `default_key_file` (the server
        passes journal.state_dir/audit.key), else audit.key beside the directory; a key
        file that does not exist is created with a new random key (mode 0600)."""
        if settings.dir is None:
            raise ValueError("an AuditLog needs a directory (audit.dir)")
        self.directory = settings.dir
        self.fsync: FsyncPolicy = settings.fsync
        self.max_file_bytes = settings.max_file_bytes
        self.anchor_path = settings.anchor_file or settings.dir / ANCHOR_NAME
        self._configured_key = settings.key.get_secret_value() if settings.key else None
        self.key_file = settings.key_file or default_key_file or settings.dir.parent / "audit.key"
        self._key = b""
        self.seq = 0
        self.last_hash = GENESIS
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._file: Any = None
        self._path = Path()
        self._identity = (0, 0)  # (device, inode) of the open file
        self._size = 0  # how long the open file is, by what this writer wrote
        self._first_seq = 1  # the first seq this writer put in the open file
        self._anchor_fd: int | None = None
        self._anchor_identity = (0, 0)
        self._anchor_behind = False  # records written since the anchor was
        self._anchor_at = 0.0  # when it was, by time.monotonic()
        self._index = 0
        self._rotate_requested = False
        self.written = 0

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = load_checkpoint_key(self._configured_key, self.key_file)
        if not self._key:
            raise ConfigError(f"{self.key_file}: the audit key file is empty")
        files = log_files(self.directory)
        reason: tuple[str, str] | None = None
        last_prev = ""  # the prev of the newest line, to recognise an anchor one behind it
        if files:
            last = files[-1]
            own, clean = _tail_state(last)
            record = own
            if record is None:
                # The newest file holds no whole record; the chain stands where the one
                # before it ends.
                for older in reversed(files[:-1]):
                    record, _ = _tail_state(older)
                    if record is not None:
                        break
            if record is not None:
                self.seq, self.last_hash = _position(record), str(record["hash"])
                last_prev = str(record.get("prev", ""))
            if not clean:
                reason = ("restart", f"{last.name} ends in an incomplete record (a crash)")
            elif record is not None and record.get("mac") != record_mac(self._key, record):
                reason = (
                    "key",
                    "the last record before this file does not verify under the server's key "
                    "(the key changed, the record was edited, or it predates signed records)",
                )
            elif own is None and last.stat().st_size > 0:
                reason = ("restart", f"{last.name} holds no whole record")
        anchor = self._own_anchor()
        if anchor is not None:
            a_seq, a_hash = anchor["seq"], anchor["hash"]
            if a_hash not in (self.last_hash, last_prev) and a_seq >= self.seq:
                reason = (
                    "anchor",
                    f"the log ended at seq {self.seq} but the anchor named seq {a_seq} "
                    f"({anchor.get('file', '')}, {anchor.get('time', '')}): records were cut "
                    "off while the server was down",
                )
                log.error("audit log ends before its anchor", seq=self.seq, anchor_seq=a_seq)
                self.seq, self.last_hash = a_seq, a_hash
        if files and reason is None:
            # Go on in the newest file; an empty one (a crash just after it was created)
            # first gets the rotation record it lacks.
            last = files[-1]
            self._open(last)
            if self._size == 0 and len(files) > 1:
                self._rotation("restart", f"{last.name} was empty", files[-2].name)
        else:
            self._open(self._next_path())
            if reason is not None:
                log.warning("audit log continues in a new file", reason=reason[1])
                self._rotation(*reason, files[-1].name if files else "")
        log.info("audit head", seq=self.seq, hash=self.last_hash, file=self._path.name)
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
            try:
                item = self._queue.get(timeout=self._anchor_due())
            except queue.Empty:
                try:
                    self._write_anchor()
                except Exception as exc:
                    log.error("audit anchor write failed", error=f"{type(exc).__name__}: {exc}")
                continue
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
        try:
            # A file changed after the last batch still gets its rotation record.
            self._check_file()
            if self._anchor_behind:
                self._write_anchor()
        except Exception as exc:
            log.error("audit write failed", error=f"{type(exc).__name__}: {exc}")
        self._file.close()
        if self._anchor_fd is not None:
            os.close(self._anchor_fd)
            self._anchor_fd = None
        log.info("audit head", seq=self.seq, hash=self.last_hash, file=self._path.name)

    def _write(self, batch: list[_Item]) -> None:
        if batch:
            self._check_file()
            lines = []
            for record, _ in batch:
                if record is _FLUSH:
                    continue
                body = {**record, "seq": self.seq + 1, "prev": self.last_hash}
                line, digest = _sealed(self._key, body)
                lines.append(line)
                self.seq += 1
                self.last_hash = digest
            flushing = any(r is _FLUSH for r, _ in batch)
            self._append(b"".join(lines), sync=flushing)
            self.written += len(lines)
            if lines:
                self._anchor_behind = True
            if self._anchor_behind and (flushing or self._anchor_due() == 0):
                self._write_anchor()
            for _, future in batch:
                if future is not None:
                    future.set_result(None)
        if self._rotate_requested or self._size >= self.max_file_bytes:
            reason = "requested" if self._rotate_requested else "size"
            self._rotate_requested = False
            previous = self._path.name
            self._file.close()
            self._open(self._next_path())
            self._rotation(reason, "", previous)

    def _append(self, data: bytes, *, sync: bool = False) -> None:
        self._file.write(data)
        self._file.flush()
        self._size += len(data)
        if self.fsync != "never" or sync:
            os.fsync(self._file.fileno())

    def flush(self, timeout_s: float = 30.0) -> None:
        """Blocks until every record queued before this call is written and fsynced."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.put((_FLUSH, future))
        future.result(timeout_s)

    # -- files, rotation records and the anchor -------------------------------------

    def _next_path(self) -> Path:
        """The next file's path, past any file that appeared meanwhile (never another's)."""
        newest = max((_file_index(p) for p in log_files(self.directory)), default=0)
        self._index = max(self._index, newest) + 1
        return self.directory / f"audit-{self._index:06d}.jsonl"

    def _open(self, path: Path) -> None:
        self._file = open(path, "ab")  # noqa: SIM115 (closed by the writer thread)
        self._path = path
        st = os.fstat(self._file.fileno())
        self._identity, self._size = (st.st_dev, st.st_ino), st.st_size
        self._first_seq = self.seq + 1

    def _rotation(self, reason: str, detail: str, previous: str) -> None:
        """Begins the open file with a rotation record after the chain's head."""
        body = {
            "time": now_iso(),
            "rotation": reason,
            "detail": detail,
            "previous_file": previous,
            "after_seq": self.seq,
            "prev": self.last_hash,
        }
        line, digest = _sealed(self._key, body)
        self._append(line)
        self.last_hash = digest
        self._write_anchor()
        log.info("audit head", seq=self.seq, hash=self.last_hash, file=self._path.name)

    def _check_file(self) -> None:
        """Moves to a new file, with a rotation record saying why, when the open one is no
        longer the file at its path as this writer left it."""
        name = self._path.name
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            change, what = "deleted", "deleted or renamed"
        else:
            if (st.st_dev, st.st_ino) != self._identity:
                change, what = "replaced", "replaced by another file"
            elif st.st_size < self._size:
                change, what = "truncated", f"truncated to {st.st_size} bytes of {self._size}"
            elif st.st_size > self._size:
                grown = st.st_size - self._size
                change, what = "appended", f"written by someone else (+{grown} bytes)"
            else:
                return
        wrote = (
            f"seq {self._first_seq}..{self.seq}" if self.seq >= self._first_seq else "no records"
        )
        detail = f"{name} was {what} while the server had it open (it had written {wrote} there)"
        log.error("audit file changed behind the writer; continuing in a new file", detail=detail)
        self._file.close()
        self._open(self._next_path())
        self._rotation(change, detail, name)

    def _anchor_due(self) -> float | None:
        """Seconds until the anchor is due (0: now); None when it is up to date."""
        if not self._anchor_behind:
            return None
        return max(0.0, self._anchor_at + _ANCHOR_EVERY_S - time.monotonic())

    def _write_anchor(self) -> None:
        """Overwrites the anchor in place: one write of a fixed-size block, cheaper than a
        new file and a rename each batch, and not torn by a crash (a power cut may leave it
        a batch behind the log, never ahead: the log is synced first)."""
        body: dict[str, Any] = {
            "seq": self.seq,
            "hash": self.last_hash,
            "file": self._path.name,
            "time": now_iso(),
        }
        body["mac"] = anchor_mac(self._key, body)
        data = canonical(body).ljust(_ANCHOR_BYTES - 1) + b"\n"
        try:
            st = os.stat(self.anchor_path)
            same = (st.st_dev, st.st_ino) == self._anchor_identity
        except FileNotFoundError:
            same = False
        if not same:
            if self._anchor_fd is not None:
                log.warning(
                    "audit anchor was replaced or deleted; rewritten", file=str(self.anchor_path)
                )
                os.close(self._anchor_fd)
            self._anchor_fd = os.open(self.anchor_path, os.O_WRONLY | os.O_CREAT, 0o644)
            st = os.fstat(self._anchor_fd)
            self._anchor_identity = (st.st_dev, st.st_ino)
        assert self._anchor_fd is not None
        os.pwrite(self._anchor_fd, data, 0)
        if not same:
            os.ftruncate(self._anchor_fd, len(data))  # after the write: never empty
        self._anchor_behind, self._anchor_at = False, time.monotonic()

    def _own_anchor(self) -> dict[str, Any] | None:
        """The anchor this writer left, if it is there and verifies under its key."""
        try:
            anchor = read_anchor(self.anchor_path)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.error("audit anchor unreadable; ignored", file=str(self.anchor_path), why=str(exc))
            return None
        if anchor.get("mac") != anchor_mac(self._key, anchor):
            log.error("audit anchor does not verify; ignored", file=str(self.anchor_path))
            return None
        return anchor


def _tail_state(path: Path) -> tuple[dict[str, Any] | None, bool]:
    """The last whole record in `path`, and whether the file ends cleanly."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - _TAIL_BYTES))
        data = f.read()
    clean = data.endswith(b"\n") or not data
    for raw in reversed(data.split(b"\n")[:-1] if data else []):
        try:
            record = json.loads(raw)
            _position(record)
            if isinstance(record["hash"], str):
                return record, clean
        except (ValueError, KeyError, TypeError):
            continue
    return None, clean


# -- verification and queries ---------------------------------------------------------


@dataclass
class VerifyReport:
    records: int = 0  # request records (rotation records are counted apart)
    files: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str = ""  # the last line's hash
    head_seq: int = 0  # the seq the last line stands at: (head_seq, last_hash) starts what follows
    error: str = ""  # the first bad record, "" when the chain holds
    warnings: list[str] = field(default_factory=list)
    rotations: int = 0
    macs_checked: bool = False
    anchor_seq: int | None = None  # the anchor the end was compared with

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


def parse_start(text: str) -> tuple[int, str]:
    """`SEQ:HASH` (as verify prints them) -> (seq, hash)."""
    seq, sep, digest = text.partition(":")
    if not sep or not seq.isdigit() or not digest.startswith("sha256:"):
        raise ValueError(f"{text!r}: expected SEQ:HASH, e.g. 812:sha256:ab12...")
    return int(seq), digest


def verify(
    paths: Sequence[Path],
    *,
    key: bytes | None = None,
    anchor: Path | None = None,
    start: tuple[int, str] | None = None,
    check_anchor: bool = True,
) -> VerifyReport:
    """Checks the chain through `paths` in order (directories expand to their files).
    Stops at the first bad record and names it: file, line, and the seq expected there.

    With `key`, every record's MAC too. A directory is checked as a whole log: it must
    start at seq 1, or after `start` (the (seq, hash) before its oldest file, which were
    archived), and its end must be the head its anchor names (`anchor`, else dir/anchor.json;
    `check_anchor=False` skips this). Files named one by one may start anywhere (a warning)
    and are compared with an anchor only when one is given."""
    report = VerifyReport(macs_checked=key is not None)
    whole_log = any(path.is_dir() for path in paths)
    head: dict[str, Any] | None = None
    if check_anchor and anchor is None and whole_log:
        anchor = next(path for path in paths if path.is_dir()) / ANCHOR_NAME
    if check_anchor and anchor is not None:
        try:
            head = read_anchor(anchor)
        except FileNotFoundError:
            report.error = (
                f"{anchor}: no anchor file, so records cut off the end cannot be ruled out "
                "(give the writer's anchor_file as --anchor, or --no-anchor)"
            )
            return report
        except ValueError as exc:
            report.error = f"{anchor}: unreadable anchor ({exc})"
            return report
        if key is not None and head.get("mac") != anchor_mac(key, head):
            report.error = f"{anchor}: the anchor's MAC does not match (edited, or another key's)"
            return report
    prev: str | None = None  # the hash of the last line checked
    at: int | None = None  # the seq it stands at
    after_anchor: int | None = None  # lines after the anchor's head, once it was met
    files = expand(paths)
    for path in files:
        report.files += 1
        lines, tail = _lines(path)
        for number, raw in enumerate(lines, start=1):
            where = f"{path}:{number}"
            expected = None if at is None else at + 1
            want = f"record seq {expected}" if expected is not None else "record"
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
                stored = record.pop("hash")
                rotation = "rotation" in record
                seq, linked = _position(record), record["prev"]
            except (ValueError, KeyError, TypeError) as exc:
                report.error = f"{where}: {want}: unreadable ({type(exc).__name__}: {exc})"
                return report
            if rotation:
                want = "rotation record"
            if record_hash(record) != stored:
                report.error = f"{where}: {want}: content does not match its hash (edited)"
                return report
            if key is not None:
                mac = record.get("mac")
                if not isinstance(mac, str):
                    report.error = (
                        f"{where}: {want}: has no MAC (written without a key, or it was removed)"
                    )
                    return report
                if not hmac.compare_digest(mac, record_mac(key, record)):
                    report.error = (
                        f"{where}: {want}: its MAC does not match: edited (with its hash "
                        "recomputed), or not signed with this key"
                    )
                    return report
            why = f"{record.get('rotation')}: {record.get('detail') or 'no detail'}"
            if prev is None:
                problem = _start_problem(record, seq, linked, start, whole_log)
                if problem.startswith("warning: "):
                    report.warnings.append(f"{where}: {problem.removeprefix('warning: ')}")
                elif problem:
                    report.error = f"{where}: {problem}"
                    return report
            elif rotation:
                assert at is not None
                if seq > at:
                    report.error = (
                        f"{where}: records seq {at + 1}..{seq} are missing before this file "
                        f"(its rotation record names seq {seq} as the last before it; {why})"
                    )
                    return report
                if seq < at or linked != prev:
                    report.error = (
                        f"{where}: rotation record: prev does not match the record before it"
                    )
                    return report
            else:
                if expected is not None and seq != expected:
                    how = "removed" if seq > expected else "reordered or duplicated"
                    report.error = f"{where}: {want}: found seq {seq} instead (records {how})"
                    return report
                if linked != prev:
                    report.error = f"{where}: {want}: prev does not match the record before it"
                    return report
            if rotation:
                report.rotations += 1
                if record.get("rotation") not in _ROUTINE and prev is not None:
                    report.warnings.append(f"{where}: the writer rotated here ({why})")
            else:
                if report.first_seq is None:
                    report.first_seq = seq
                report.records += 1
                report.last_seq = seq
            prev, at = stored, seq
            report.head_seq, report.last_hash = seq, stored
            if head is not None:
                if stored == head["hash"] and seq == head["seq"]:
                    after_anchor = 0
                elif after_anchor is not None:
                    after_anchor += 1
        if tail:
            report.warnings.append(
                f"{path}:{len(lines) + 1}: incomplete last record ({len(tail)} bytes, as a "
                "crash mid-write leaves); not counted"
            )
    if not files:
        report.error = "no audit files given"
        return report
    if head is not None:
        report.anchor_seq = head["seq"]
        named = f"seq {head['seq']} ({head.get('file', '')}, {head.get('time', '')})"
        if after_anchor is None:
            if (at or 0) < head["seq"]:
                report.error = (
                    f"{anchor}: the log ends at seq {at or 0} but its anchor names {named}: "
                    "records were cut off the end"
                )
            elif at == head["seq"]:
                report.error = (
                    f"{anchor}: the log's last line is not the head its anchor names ({named}, "
                    f"hash {head['hash']}): lines were cut off the end, or rewritten"
                )
            else:
                report.error = (
                    f"{anchor}: the anchor names {named}, hash {head['hash']}, which is not "
                    "in the log (it was rewritten, or the anchor is another log's)"
                )
            return report
        if after_anchor:
            report.warnings.append(
                f"{anchor}: {after_anchor} line(s) after the anchor's {named} are not covered "
                "by it (written since it was saved, as on a running server, or appended)"
            )
    if key is None:
        report.warnings.append(
            "MACs not checked (no key): the links and hashes hold, but whoever can write "
            "the files could have rewritten them; check with the audit key"
        )
    return report


def _start_problem(
    record: Mapping[str, Any],
    seq: int,
    linked: str,
    start: tuple[int, str] | None,
    whole_log: bool,
) -> str:
    """What is wrong with the first line checked ("" when nothing; "warning: ..." when
    only worth saying)."""
    rotation = "rotation" in record
    after = seq if rotation else seq - 1  # the seq of the record before it
    if start is not None:
        if (after, linked) != start:
            return (
                f"the chain starts after seq {after} ({linked}), not after the given start "
                f"{start[0]} ({start[1]})"
            )
        return ""
    if (after, linked) == (0, GENESIS):
        return ""
    if not rotation and seq == 1:
        return "record seq 1: prev is not the genesis value"
    if not whole_log:
        return (
            f"warning: the chain starts at seq {after + 1}; give the earlier files too to "
            "check what came before"
        )
    if rotation:
        return (
            f"the log starts with a rotation record after seq {after} "
            f"({record.get('rotation')}: {record.get('detail') or 'no detail'}): the files "
            f"before it are missing; if they were archived (and checked), give "
            f"--start {after}:{linked}"
        )
    return (
        f"the chain starts at seq {seq} with no rotation record before it: the records "
        "before it were removed"
    )


def records(
    paths: Sequence[Path], unreadable: Callable[[Path, int], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Every whole, parsable record in `paths`, in order; `unreadable(path, line)` hears
    of each whole line that is not one (a torn last line, cut by a crash, is not told)."""
    for path in expand(paths):
        lines, _ = _lines(path)
        for number, raw in enumerate(lines, 1):
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if isinstance(record, dict):
                yield record
            elif unreadable is not None:
                unreadable(path, number)


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
    unreadable: Callable[[Path, int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Request records matching every filter given (rotation records are not requests);
    times are ISO 8601 (UTC unless stated)."""
    start = _instant(since) if since else None
    end = _instant(until) if until else None
    for record in records(paths, unreadable):
        if "rotation" in record:
            continue
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
