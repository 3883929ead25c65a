"""The key checkpoints are signed with, and the signature that binds a checkpoint to
its execution and position."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path


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


def checkpoint_mac(key: bytes, tenant: str, idempotency_key: str, seq: int, blob: bytes) -> bytes:
    """Binds a checkpoint to its execution and position, so neither a flipped bit nor a
    checkpoint copied from another run or an earlier call passes."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in (tenant.encode(), idempotency_key.encode(), str(seq).encode()):
        mac.update(len(part).to_bytes(4, "big") + part)
    mac.update(blob)
    return mac.digest()
