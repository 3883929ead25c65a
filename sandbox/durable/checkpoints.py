"""The key the journal is signed with, and the signatures that bind each replayed field
(a checkpoint, a tool answer or clock reading, a result, the pinned values) to its
execution and position."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandbox.durable.journal import ToolAnswer


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


def journal_mac(
    key: bytes, tenant: str, idempotency_key: str, field: str, position: int, *parts: str | bytes
) -> bytes:
    """Signs one replayed field of a journal entry: binds `parts` to its execution (tenant,
    key), to what it is (`field`) and to its position, so that neither an edit nor a value
    copied from another entry, field or position passes."""
    framed = []
    for part in (tenant, idempotency_key, field, str(position), *parts):
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        framed.append(len(data).to_bytes(8, "big") + data)
    # One call over the framed parts: the same MAC as updating part by part, in C.
    return hmac.digest(key, b"".join(framed), hashlib.sha256)


def checkpoint_mac(
    key: bytes,
    tenant: str,
    idempotency_key: str,
    seq: int,
    blob: bytes,
    output: Mapping[str, object],
) -> bytes:
    """Binds a checkpoint (its interpreter state and what the code had printed) to its
    execution and position, so neither a flipped bit nor a checkpoint copied from another
    run or an earlier call passes."""
    printed = json.dumps(output, sort_keys=True, separators=(",", ":")).encode()
    return journal_mac(key, tenant, idempotency_key, "checkpoint", seq, blob, printed)


def answer_mac(key: bytes, tenant: str, idempotency_key: str, answer: ToolAnswer) -> bytes:
    """Binds a journaled tool answer (or clock reading, at a negative seq) to its run and
    position: the call's name and arguments and the answer."""
    return journal_mac(
        key,
        tenant,
        idempotency_key,
        "answer",
        answer.seq,
        answer.name,
        answer.args_json,
        answer.kwargs_json,
        answer.answer_json,
    )
