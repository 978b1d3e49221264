"""Sealing personal values at the edge (DESIGN 4.1): AES-256-GCM with a salted commitment.

Pure functions over key bytes; where keys come from is the key store's business.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any, NamedTuple

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.canonical import canonical_json

COMMIT_PREFIX = b"ledger/v1/commit"
SALT_BYTES = 16
NONCE_BYTES = 12


class SealError(Exception):
    """A sealed value cannot be opened: wrong key, moved ciphertext, or broken commitment."""


class SealedValue(NamedTuple):
    """A sealed value's parts (DESIGN 4.1). A named tuple: made for every value sealed,
    in a fraction of a frozen dataclass's time."""

    scope: str
    kid: str
    ct: str
    commit: str

    def to_dict(self) -> dict[str, str]:
        return {"scope": self.scope, "kid": self.kid, "ct": self.ct, "commit": self.commit}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SealedValue:
        return cls(scope=data["scope"], kid=data["kid"], ct=data["ct"], commit=data["commit"])


def associated_data(subject: str, scope: str, kid: str, category: str) -> bytes:
    """Binds a ciphertext to its subject, scope, key and category, so it cannot be moved."""
    return canonical_json(["ledger/v1/seal", subject, scope, kid, category])


def commitment(salt: bytes, canonical_value: bytes) -> str:
    return hashlib.sha256(COMMIT_PREFIX + salt + canonical_value).hexdigest()


def seal(
    key: bytes | AESGCM, *, subject: str, scope: str, kid: str, category: str, value: Any
) -> SealedValue:
    """Encrypt one value: plaintext = salt || canonical JSON; commit over the same bytes.

    `key` is the key's bytes, or an `AESGCM` of them for a caller that seals many values
    with one key (setting up the cipher is a third of sealing a short value).
    """
    fresh = os.urandom(SALT_BYTES + NONCE_BYTES)
    salt, nonce = fresh[:SALT_BYTES], fresh[SALT_BYTES:]
    body = canonical_json(value)
    cipher = key if isinstance(key, AESGCM) else AESGCM(key)
    ct = cipher.encrypt(nonce, salt + body, associated_data(subject, scope, kid, category))
    return SealedValue(
        scope=scope,
        kid=kid,
        ct=base64.b64encode(nonce + ct).decode("ascii"),
        commit=commitment(salt, body),
    )


def unseal(key: bytes, sealed: SealedValue, *, subject: str, category: str) -> Any:
    """Decrypt and check the commitment; any mismatch is a SealError, never a wrong value."""
    try:
        raw = base64.b64decode(sealed.ct, validate=True)
        plain = AESGCM(key).decrypt(
            raw[:NONCE_BYTES],
            raw[NONCE_BYTES:],
            associated_data(subject, sealed.scope, sealed.kid, category),
        )
    except (InvalidTag, ValueError) as exc:
        raise SealError("the sealed value does not open with this key and binding") from exc
    salt, body = plain[:SALT_BYTES], plain[SALT_BYTES:]
    if not hmac.compare_digest(commitment(salt, body), sealed.commit):
        raise SealError("the sealed value does not match its commitment")
    return orjson.loads(body)


def opening(key: bytes, sealed: SealedValue, *, subject: str, category: str) -> tuple[str, Any]:
    """The salt (hex) and value: what a subject or auditor needs to check a commit."""
    raw = base64.b64decode(sealed.ct, validate=True)
    plain = AESGCM(key).decrypt(
        raw[:NONCE_BYTES],
        raw[NONCE_BYTES:],
        associated_data(subject, sealed.scope, sealed.kid, category),
    )
    return plain[:SALT_BYTES].hex(), orjson.loads(plain[SALT_BYTES:])
