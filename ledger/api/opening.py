"""Opening the ledger in a process that starts beside others on one PostgreSQL database.

Every `Ledger.open` creates the tables and functions it needs (`CREATE ... IF NOT EXISTS`,
`CREATE OR REPLACE FUNCTION`). PostgreSQL refuses two such statements at the same moment on
one catalogue row ("tuple concurrently updated"), which is what happens when `serve` starts
its worker processes and its background process together. The statements are idempotent,
so the loser simply tries again.
"""

from __future__ import annotations

import random
import time

from ledger.clock import Clock
from ledger.config import Settings
from ledger.facade import Ledger
from ledger.logs import get_logger

log = get_logger("ledger.http")
ATTEMPTS = 6


def open_ledger(settings: Settings | None = None, *, clock: Clock | None = None) -> Ledger:
    """`Ledger.open` (and the read models' tables), retried when a concurrent start-up
    collides with it."""
    from eventsourcing.persistence import PersistenceError

    for attempt in range(1, ATTEMPTS + 1):
        try:
            ledger = Ledger.open(settings, clock=clock)
            try:
                _ = ledger.read_models  # their tables too, inside the retry
            except BaseException:
                ledger.close()
                raise
            return ledger
        except PersistenceError as exc:
            if attempt == ATTEMPTS or "concurrently" not in str(exc):
                raise
            log.warning("open_retried", attempt=attempt, error=type(exc).__name__)
            time.sleep(0.05 * attempt * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")  # pragma: no cover
