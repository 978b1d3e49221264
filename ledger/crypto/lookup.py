"""Keyed-hash lookup of identifiers (DESIGN 4.4): normalise, then HMAC-SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import re

from ledger.domain.cpr import normalise_cpr

LOOKUP_KINDS = ("cpr", "email", "phone", "customer_number", "cvr")
_NON_DIGITS = re.compile(r"\D")


def normalise_identifier(kind: str, value: str) -> str:
    """The one form of an identifier that lookups compare (raises ValueError if unusable)."""
    text = value.strip()
    if kind == "cpr":
        return normalise_cpr(text)
    if kind == "email":
        if "@" not in text:
            raise ValueError("not an e-mail address")
        return text.lower()
    if kind == "phone":
        return normalise_phone(text)
    if kind == "cvr":
        digits = _NON_DIGITS.sub("", text)
        if len(digits) != 8:
            raise ValueError("a CVR number has eight digits")
        return digits
    if kind == "customer_number":
        if not text:
            raise ValueError("empty customer number")
        return text
    raise ValueError(f"not a lookup identifier kind: {kind}")


def normalise_phone(text: str) -> str:
    """E.164, with +45 (Denmark) where no country code is given."""
    compact = re.sub(r"[\s\-().]", "", text)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if compact.startswith("+"):
        digits = compact[1:]
        if not digits.isdigit() or not 7 <= len(digits) <= 15:
            raise ValueError("not a phone number")
        return "+" + digits
    if not compact.isdigit() or len(compact) != 8:
        raise ValueError("not a phone number")
    return "+45" + compact


def lookup_digest(lookup_key: bytes, kind: str, normalised: str) -> bytes:
    return hmac.new(lookup_key, f"{kind}\x00{normalised}".encode(), hashlib.sha256).digest()
