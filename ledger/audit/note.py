"""C2SP signed notes and tlog checkpoints, Ed25519 only (c2sp.org/signed-note, /tlog-checkpoint).

Standard library and `cryptography` only, like `merkle`, so an auditor can reuse it. The
format is the one Go's `golang.org/x/mod/sumdb/note` and every transparency log use, so
their tools read our checkpoints and keys unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.audit.merkle import HASH_SIZE

__all__ = [
    "Checkpoint",
    "NoteError",
    "Signer",
    "Verifier",
    "format_checkpoint",
    "key_id",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint",
    "sign_note",
]

ED25519 = 0x01
"""Signature type byte of Ed25519 in the C2SP registry."""

SIGNATURE_PREFIX = "\u2014 "
"""A signature line starts with an em dash (U+2014) and a space."""

_NAME = re.compile(r"^[^\s+]+$")
_DECIMAL = re.compile(r"^(0|[1-9][0-9]*)$")


class NoteError(ValueError):
    """A note, key or checkpoint is malformed or its signature does not verify."""


def _check_name(name: str) -> str:
    if not name or not _NAME.match(name):
        raise NoteError(f"invalid key name {name!r}: it must be non-empty, no spaces, no '+'")
    return name


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key hash: SHA-256(name || 0x0A || 0x01 || public key)[:4] (C2SP signed-note)."""
    data = name.encode() + b"\n" + bytes([ED25519]) + public_key
    return hashlib.sha256(data).digest()[:4]


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not valid base64") from None


@dataclass(frozen=True)
class Verifier:
    """A public key with its name; text form `<name>+<hex key id>+<base64(0x01 || key)>`."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    def vkey(self) -> str:
        encoded = base64.b64encode(bytes([ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    @classmethod
    def parse(cls, text: str) -> Verifier:
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError("a verifier key has the form <name>+<hex key id>+<base64 key>")
        name, hash_hex, encoded = parts
        _check_name(name)
        raw = _b64decode(encoded, "the verifier key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("the verifier key is not an Ed25519 key (0x01 || 32 bytes)")
        verifier = cls(name, raw[1:])
        if hash_hex.lower() != verifier.key_id.hex() or len(hash_hex) != 8:
            raise NoteError("the verifier key's key id does not match its name and key")
        return verifier

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


class Signer:
    """An Ed25519 private key with its name; text form as Go's `note.GenerateKey` writes it."""

    def __init__(self, name: str, seed: bytes) -> None:
        if len(seed) != 32:
            raise NoteError("an Ed25519 private key is 32 bytes")
        self.name = _check_name(name)
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self._seed = seed
        public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.verifier = Verifier(name, public)

    @classmethod
    def generate(cls, name: str) -> Signer:
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        seed = Ed25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
        return cls(name, seed)

    @classmethod
    def parse(cls, text: str) -> Signer:
        """`PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`."""
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a signer key has the form PRIVATE+KEY+<name>+<hex id>+<base64 key>")
        raw = _b64decode(parts[4], "the signer key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("the signer key is not an Ed25519 key (0x01 || 32 bytes)")
        signer = cls(parts[2], raw[1:])
        if parts[3].lower() != signer.verifier.key_id.hex():
            raise NoteError("the signer key's key id does not match its name and key")
        return signer

    def skey(self) -> str:
        encoded = base64.b64encode(bytes([ED25519]) + self._seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{encoded}"

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def sign_note(text: str, signer: Signer) -> str:
    """The signed note: the text, a blank line, then `— <name> <base64(key id || sig)>`."""
    _check_text(text)
    signature = signer.sign(text.encode())
    encoded = base64.b64encode(signer.verifier.key_id + signature).decode()
    return f"{text}\n{SIGNATURE_PREFIX}{signer.name} {encoded}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("a note's text must end with a newline")
    if any((ord(c) < 0x20 and c != "\n") or c == "\x7f" for c in text):
        raise NoteError("a note's text must not contain control characters")


def open_note(note: str, verifier: Verifier) -> str:
    """The text of a signed note if `verifier` signed it; NoteError otherwise.

    Signatures by other keys are allowed (a witness may cosign) and ignored; lines that
    are not signatures, or a note without our signature, are rejected.
    """
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("a signed note needs a blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    _check_text(text)
    if not block.endswith("\n"):
        raise NoteError("the signature block must end with a newline")
    found = False
    for line in block[:-1].split("\n"):
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError("a line of the signature block is not a signature")
        name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        raw = _b64decode(encoded, "a signature")
        if len(raw) < 5:
            raise NoteError("a signature is too short")
        if name != verifier.name or raw[:4] != verifier.key_id:
            continue
        if not verifier.verify(text.encode(), raw[4:]):
            raise NoteError(f"the signature of {name} does not verify")
        found = True
    if not found:
        raise NoteError(f"the note is not signed by {verifier.name} ({verifier.key_id.hex()})")
    return text


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint commits to: the log's origin, its size, and its root hash."""

    origin: str
    size: int
    root: bytes


def format_checkpoint(checkpoint: Checkpoint) -> str:
    """The checkpoint body: origin, decimal size, base64 root, each line ending in a newline."""
    if "\n" in checkpoint.origin or not checkpoint.origin:
        raise NoteError("the origin must be one non-empty line")
    if len(checkpoint.root) != HASH_SIZE:
        raise NoteError("the root hash must be 32 bytes")
    root = base64.b64encode(checkpoint.root).decode()
    return f"{checkpoint.origin}\n{checkpoint.size}\n{root}\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """The origin, size and root of a checkpoint body (extension lines are allowed, ignored)."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("a checkpoint has an origin, a size and a root hash, one per line")
    origin, size, root = lines[0], lines[1], lines[2]
    if not origin:
        raise NoteError("the checkpoint's origin is empty")
    if not _DECIMAL.match(size):
        raise NoteError("the checkpoint's size is not a decimal number")
    raw = _b64decode(root, "the checkpoint's root hash")
    if len(raw) != HASH_SIZE:
        raise NoteError("the checkpoint's root hash is not 32 bytes")
    return Checkpoint(origin, int(size), raw)


def open_checkpoint(note: str, verifier: Verifier, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint and return what it says; NoteError on any failure."""
    checkpoint = parse_checkpoint(open_note(note, verifier))
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(f"the checkpoint's origin is {checkpoint.origin!r}, expected {origin!r}")
    return checkpoint
