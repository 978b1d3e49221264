"""Leaf data: what of each stored event the Merkle log commits to (docs/audit-format.md §2).

A leaf is the canonical JSON of the notification's id, originator, version, topic and
state, with every sealed value reduced to scope, kid and commit. The ciphertext is left
out so that a proof still holds once a ciphertext is purged, and so a bundle built from
leaves holds no ciphertext at all; the commit still binds the value.
"""

from __future__ import annotations

import hashlib
from typing import Any
from uuid import UUID

import orjson

from ledger.canonical import canonical_json

__all__ = ["SEALED_KEYS", "canonical", "leaf_data", "leaf_hash_of", "leaf_object", "reduce_sealed"]

SEALED_KEYS = frozenset({"scope", "kid", "ct", "commit"})
"""The keys of a sealed value (DESIGN 4.1); an object with exactly these keys is reduced."""

_SORT = orjson.OPT_SORT_KEYS
_LEAF_PREFIX = b"\x00"


def canonical(value: Any) -> bytes:
    """The ledger's one canonical JSON (orjson, sorted keys, no whitespace, UTF-8)."""
    return canonical_json(value)


def reduce_sealed(value: Any) -> Any:
    """The value with every sealed object `{scope, kid, ct, commit}` cut to `{scope, kid, commit}`.

    Generic on purpose: it needs no knowledge of which event fields hold personal data,
    so a new event type cannot leak a ciphertext into a leaf by being forgotten here.
    """
    if type(value) is dict:
        if len(value) == 4 and value.keys() == SEALED_KEYS:
            return {"scope": value["scope"], "kid": value["kid"], "commit": value["commit"]}
        return {k: reduce_sealed(v) for k, v in value.items()}
    if type(value) is list:
        return [reduce_sealed(v) for v in value]
    return value


def _uuid_text(originator_id: UUID | str) -> str:
    """The RFC 9562 text form (lowercase, hyphenated) whatever the store keeps (SQLite: hex)."""
    if isinstance(originator_id, UUID):
        return str(originator_id)
    return str(UUID(originator_id))


def leaf_object(
    notification_id: int,
    originator_id: UUID | str,
    originator_version: int,
    topic: str,
    state: bytes,
) -> dict[str, Any]:
    """The leaf as a JSON object (before canonical encoding)."""
    decoded = orjson.loads(state)
    # A sealed object can only be present if the key "ct" is (escaped keys are rare: check).
    if b'"ct"' in state or b"\\u" in state:
        decoded = reduce_sealed(decoded)
    return {
        "id": notification_id,
        "originator_id": _uuid_text(originator_id),
        "originator_version": originator_version,
        "topic": topic,
        "state": decoded,
    }


def leaf_data(
    notification_id: int,
    originator_id: UUID | str,
    originator_version: int,
    topic: str,
    state: bytes,
) -> bytes:
    """The leaf's bytes: canonical JSON of `leaf_object`."""
    return orjson.dumps(
        leaf_object(notification_id, originator_id, originator_version, topic, state),
        option=_SORT,
    )


def leaf_hash_of(data: bytes) -> bytes:
    """RFC 6962 leaf hash, SHA-256(0x00 || data) (inlined here for the hot loops)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()
