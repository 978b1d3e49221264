"""Canonical JSON: the one byte form used for commits, Merkle leaves and idempotency hashes."""

from __future__ import annotations

from typing import Any

import orjson


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (documented in docs/audit-format.md)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
