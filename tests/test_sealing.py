"""Sealing of personal values (DESIGN 4.1): AES-256-GCM bound to its place, salted commit."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

import pytest

from ledger.canonical import canonical_json
from ledger.crypto.sealing import (
    NONCE_BYTES,
    SALT_BYTES,
    SealedValue,
    SealError,
    opening,
    seal,
    unseal,
)

KEY = bytes(range(32))
SUBJECT = "2f0d5a4e-3b7c-4c1e-9a58-0d6f7e8a9b10"
OTHER_SUBJECT = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
SCOPE = "customer_data"
KID = "0123456789abcdef"
CATEGORY = "name"


def sealed(value: Any = "Søren Ærø Åberg", key: bytes = KEY) -> SealedValue:
    return seal(key, subject=SUBJECT, scope=SCOPE, kid=KID, category=CATEGORY, value=value)


def open_(value: SealedValue, *, subject: str = SUBJECT, category: str = CATEGORY) -> Any:
    return unseal(KEY, value, subject=subject, category=category)


@pytest.mark.parametrize(
    "value",
    [
        "Søren Ærø Åberg",
        "",
        "0101801234",
        42,
        12.5,
        True,
        ["a", "ø", 3],
        {"number": "F-77123", "amount_dkk": "1234.50"},
        {"nested": {"ü": [1, 2, {"æ": None}]}},
    ],
    ids=repr,
)
def test_round_trip(value: Any) -> None:
    box = sealed(value)
    assert box.scope == SCOPE
    assert box.kid == KID
    assert open_(box) == value


def test_sealed_dict_has_the_four_fields_and_round_trips() -> None:
    box = sealed()
    data = box.to_dict()
    assert set(data) == {"scope", "kid", "ct", "commit"}
    assert SealedValue.from_dict(data) == box
    assert open_(SealedValue.from_dict(data)) == "Søren Ærø Åberg"


def test_ciphertext_layout_and_no_plaintext() -> None:
    value = "Søren Ærø Åberg"
    box = sealed(value)
    raw = base64.b64decode(box.ct, validate=True)
    body = canonical_json(value)
    # nonce || AES-GCM(salt || canonical value) || 16-byte tag
    assert len(raw) == NONCE_BYTES + SALT_BYTES + len(body) + 16
    assert body not in raw
    assert value.encode() not in raw
    assert len(bytes.fromhex(box.commit)) == 32


def test_each_seal_has_fresh_nonce_and_salt() -> None:
    first, second = sealed(), sealed()
    assert first.ct != second.ct
    assert first.commit != second.commit  # the salt differs, so the commit links to nothing
    raw1, raw2 = base64.b64decode(first.ct), base64.b64decode(second.ct)
    assert raw1[:NONCE_BYTES] != raw2[:NONCE_BYTES]


def test_moved_to_another_subject_fails() -> None:
    with pytest.raises(SealError):
        open_(sealed(), subject=OTHER_SUBJECT)


def test_moved_to_another_category_fails() -> None:
    with pytest.raises(SealError):
        open_(sealed(), category="address")


@pytest.mark.parametrize("scope", ["marketing", "call_recording", "bookkeeping:2026"])
def test_moved_to_another_scope_fails(scope: str) -> None:
    with pytest.raises(SealError):
        open_(sealed()._replace(scope=scope))


def test_moved_to_another_kid_fails() -> None:
    with pytest.raises(SealError):
        open_(sealed()._replace(kid="fedcba9876543210"))


def test_another_key_fails() -> None:
    box = sealed()
    with pytest.raises(SealError):
        unseal(os.urandom(32), box, subject=SUBJECT, category=CATEGORY)


@pytest.mark.parametrize("position", [0, NONCE_BYTES - 1, NONCE_BYTES, NONCE_BYTES + 20, -1])
def test_tampered_ciphertext_fails(position: int) -> None:
    box = sealed()
    raw = bytearray(base64.b64decode(box.ct))
    raw[position] ^= 0x01
    tampered = box._replace(ct=base64.b64encode(bytes(raw)).decode("ascii"))
    with pytest.raises(SealError):
        open_(tampered)


def test_truncated_or_garbled_ciphertext_fails() -> None:
    box = sealed()
    raw = base64.b64decode(box.ct)
    for ct in (base64.b64encode(raw[:-1]).decode(), base64.b64encode(raw[:5]).decode(), "!!", ""):
        with pytest.raises(SealError):
            open_(box._replace(ct=ct))


def test_tampered_commit_fails() -> None:
    box = sealed()
    flipped = format(int(box.commit[0], 16) ^ 1, "x") + box.commit[1:]
    with pytest.raises(SealError):
        open_(box._replace(commit=flipped))
    # a commit of the same value under another salt does not match either
    with pytest.raises(SealError):
        open_(box._replace(commit=sealed().commit))


def test_ciphertext_with_another_values_commit_fails() -> None:
    box, other = sealed("Søren"), sealed("Mette")
    with pytest.raises(SealError):
        open_(box._replace(commit=other.commit))


@pytest.mark.parametrize(
    "value", ["Søren Ærø Åberg", {"number": "F-77123", "amount_dkk": "1234.50"}, 7], ids=repr
)
def test_commit_is_sha256_of_prefix_salt_and_canonical_value(value: Any) -> None:
    box = sealed(value)
    salt_hex, opened = opening(KEY, box, subject=SUBJECT, category=CATEGORY)
    salt = bytes.fromhex(salt_hex)
    assert len(salt) == SALT_BYTES
    assert opened == value
    recomputed = hashlib.sha256(b"ledger/v1/commit" + salt + canonical_json(opened)).hexdigest()
    assert recomputed == box.commit
    # the commit binds exactly this value: another value under the same salt differs
    assert hashlib.sha256(b"ledger/v1/commit" + salt + canonical_json("x")).hexdigest() != (
        box.commit
    )


def test_canonical_value_sorts_keys_for_the_commit() -> None:
    box = sealed({"b": 1, "a": 2})
    salt_hex, _ = opening(KEY, box, subject=SUBJECT, category=CATEGORY)
    body = b'{"a":2,"b":1}'
    expected = hashlib.sha256(b"ledger/v1/commit" + bytes.fromhex(salt_hex) + body).hexdigest()
    assert box.commit == expected
