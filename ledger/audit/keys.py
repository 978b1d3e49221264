"""The checkpoint signing key: `LEDGER_SIGNING_KEY`, or a 0600 file in `LEDGER_HOME` made on
first need (DESIGN 4.6).

Stored in Go's `note` private-key text form, so an auditor's or operator's standard
transparency-log tools can use the same key files.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import tempfile

from ledger.audit.note import NoteError, Signer, Verifier
from ledger.config import Settings

__all__ = ["DEFAULT_ORIGIN", "SigningKeyError", "load_signer", "public_key"]

DEFAULT_ORIGIN = "cekura.dk/personal-data-ledger"
"""The log's origin line and the key's name (a schema-less URL, as C2SP recommends)."""


class SigningKeyError(Exception):
    """The signing key is missing, unreadable or malformed."""


def _parse(text: str, what: str) -> Signer:
    text = text.strip()
    if text.startswith("PRIVATE+KEY+"):
        try:
            return Signer.parse(text)
        except NoteError as exc:
            raise SigningKeyError(f"{what}: {exc}") from None
    try:
        seed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError(f"{what} is neither PRIVATE+KEY+... nor base64") from None
    if len(seed) != 32:
        raise SigningKeyError(f"{what} must be an Ed25519 seed of 32 bytes")
    return Signer(DEFAULT_ORIGIN, seed)


def load_signer(settings: Settings, *, create: bool = True) -> Signer:
    """The environment wins; else the key file, created (0600, atomically) when missing.

    Creation links a finished temporary file into place, so two processes starting at
    once cannot both create a key, and none ever reads a half-written one.
    """
    if settings.signing_key:
        return _parse(settings.signing_key, "LEDGER_SIGNING_KEY")
    path = settings.signing_key_file
    if not path.exists():
        if not create:
            raise SigningKeyError(f"no signing key: set LEDGER_SIGNING_KEY or create {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".signing.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(Signer.generate(DEFAULT_ORIGIN).skey() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process won: use its key
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    if path.stat().st_mode & 0o077:
        raise SigningKeyError(f"{path} must be readable by its owner only (chmod 600)")
    return _parse(path.read_text(encoding="utf-8"), str(path))


def public_key(settings: Settings) -> Verifier:
    """The verifier key of the configured signing key (created if missing)."""
    return load_signer(settings).verifier
