"""The master key: from `LEDGER_MASTER_KEY` (base64) or a 0600 key file made on first use."""

from __future__ import annotations

import base64
import binascii
import os

from ledger.config import Settings


class MasterKeyError(Exception):
    pass


def decode_master_key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        try:
            raw = base64.urlsafe_b64decode(text.strip())
        except (binascii.Error, ValueError):
            raise MasterKeyError("LEDGER_MASTER_KEY is not base64") from None
    if len(raw) != 32:
        raise MasterKeyError("the master key must be 32 bytes (base64 of 32 random bytes)")
    return raw


def new_master_key_text() -> str:
    return base64.b64encode(os.urandom(32)).decode("ascii")


def load_master_key(settings: Settings, *, create: bool = True) -> bytes:
    """The environment wins; otherwise the key file, created with mode 0600 if missing."""
    if settings.master_key:
        return decode_master_key(settings.master_key)
    path = settings.master_key_file
    if not path.exists():
        if not create:
            raise MasterKeyError(f"no master key: set LEDGER_MASTER_KEY or create {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(new_master_key_text() + "\n")
    if path.stat().st_mode & 0o077:
        raise MasterKeyError(f"{path} must be readable by its owner only (chmod 600)")
    return decode_master_key(path.read_text())
