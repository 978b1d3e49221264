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
_loads = orjson.loads
_dumps = orjson.dumps
_LEAF_PREFIX = b"\x00"


def canonical(value: Any) -> bytes:
    """The ledger's one canonical JSON (orjson, sorted keys, no whitespace, UTF-8)."""
    return canonical_json(value)


def reduce_sealed(value: Any) -> Any:
    """The value with every sealed object `{scope, kid, ct, commit}` cut to `{scope, kid, commit}`.

    Generic on purpose: it needs no knowledge of which event fields hold personal data,
    so a new event type cannot leak a ciphertext into a leaf by being forgotten here.
    Only containers are descended into (scalars are most of an event, and stay as they are).
    """
    kind = type(value)
    if kind is dict:
        if len(value) == 4 and value.keys() == SEALED_KEYS:
            return {"scope": value["scope"], "kid": value["kid"], "commit": value["commit"]}
        out = {}
        for key, item in value.items():
            item_kind = type(item)
            out[key] = reduce_sealed(item) if item_kind is dict or item_kind is list else item
        return out
    if kind is list:
        return [reduce_sealed(item) if type(item) in (dict, list) else item for item in value]
    return value


_UUID_TEXT: dict[UUID | str, str] = {}
"""Stored originator id → text form; subjects have many events, so most ids repeat."""


def _uuid_text(originator_id: UUID | str) -> str:
    """The RFC 9562 text form (lowercase, hyphenated) whatever the store keeps (SQLite: hex).

    Parsed with `UUID` (which rejects anything that is not a UUID), then cached.
    """
    text = _UUID_TEXT.get(originator_id)
    if text is None:
        parsed = originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
        text = str(parsed)
        if isinstance(originator_id, str) and originator_id not in (parsed.hex, text):
            # Only the forms the stores write are read: an id rewritten in another form
            # (upper case, braces) would hide the events from the ledger yet give the
            # same leaf, so it is a bad event, not the same one.
            raise ValueError("the stored originator id is not in a form the ledger writes")
        if len(_UUID_TEXT) >= 100_000:
            _UUID_TEXT.clear()
        _UUID_TEXT[originator_id] = text
    return text


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
    """The leaf's bytes: canonical JSON of `leaf_object` (inlined: this is the hot loop)."""
    decoded = _loads(state)
    if b'"ct"' in state or b"\\u" in state:
        decoded = reduce_sealed(decoded)
    return _dumps(
        {
            "id": notification_id,
            "originator_id": _UUID_TEXT.get(originator_id) or _uuid_text(originator_id),
            "originator_version": originator_version,
            "topic": topic,
            "state": decoded,
        },
        option=_SORT,
    )


def leaf_hash_of(data: bytes) -> bytes:
    """RFC 6962 leaf hash, SHA-256(0x00 || data) (inlined here for the hot loops)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()
