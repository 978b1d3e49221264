"""Idempotency receipts: the first result of a command sent with an idempotency key.

A repeat of the same command with the same key gets that result again instead of being
executed twice; a different command with the key is refused. The receipt is an aggregate
of its own, saved in the same transaction as the command's events.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.utils import register_topic

from ledger.canonical import canonical_json
from ledger.domain.calendar import local_date

RECEIPT_NAMESPACE = UUID("6f1c1a52-4d1e-4bb5-9a57-0c9b1c1ad0e5")


class CommandReceipt(Aggregate):
    """The first result of a command sent with an idempotency key.

    Saved in the same transaction as the command's events; its id is derived from the key,
    so a concurrent repeat collides on the event store's unique constraint.
    """

    class Received(Aggregate.Created):
        payload_hash: str
        result: dict[str, Any]
        period: str | None = None  # whose receipt key made the hash (None: the lookup key)

    def __init__(
        self, payload_hash: str, result: dict[str, Any], period: str | None = None
    ) -> None:
        self.payload_hash = payload_hash
        self.result = result
        self.period = period

    @staticmethod
    def id_for(key: str) -> UUID:
        return uuid.uuid5(RECEIPT_NAMESPACE, key)

    @classmethod
    def issue(
        cls, key: str, payload_hash: str, result: dict[str, Any], period: str
    ) -> CommandReceipt:
        return cls._create(
            cls.Received,
            id=cls.id_for(key),
            payload_hash=payload_hash,
            result=result,
            period=period,
        )


RECEIPTS_HONOURED = timedelta(days=7)
"""How long an idempotency key is honoured at least; its receipt key goes within 14 days."""


def receipt_period(moment: datetime) -> str:
    """The ISO week (Copenhagen) whose receipt key hashes a command received at `moment`."""
    year, week, _ = local_date(moment).isocalendar()
    return f"{year}-W{week:02d}"


def payload_hash(raw: dict[str, Any], key: bytes) -> str:
    """Keyed (HMAC under a key-store key): the command holds personal values, and a plain
    hash in a receipt would let the event store alone confirm a guessed CPR number. The
    key is the receipt key of the week (`KeyStore.receipt_key`), destroyed when the week's
    receipts are no longer honoured, so no receipt confirms anything for long, not even
    to whoever holds the key store (receipts made before these keys used the lookup key)."""
    body = {k: v for k, v in raw.items() if k != "idempotency_key"}
    message = b"ledger/v1/receipt\x00" + canonical_json(body)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


# Receipts stored before this module existed name their class by its old place.
register_topic("ledger.app:CommandReceipt", CommandReceipt)
