"""As-of replay (DESIGN 4.7): the read models as they stood at a past moment, for auditors.

The events up to the moment are replayed into read models in a temporary SQLite store
(whatever the ledger's own backend), which answers `subject show` and the reports as of
then and is deleted afterwards. Two readings of "as of":

- `recorded` (default): what the ledger knew at that moment — events recorded by then,
  by the event store's own timestamp. This is what an officer would have seen.
- `occurred`: what had happened in the world by then — events whose `occurred_at` is not
  later, including those reported late (recorded after the moment).

The replay keeps no ciphertext (a sealed value is reduced to scope, key id and
commitment), so it can never be a copy of personal data that was erased since.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from eventsourcing.application import Application

from ledger.domain.calendar import parse_iso
from ledger.domain.policy import PolicyCatalogue
from ledger.projections.readmodels import ReadModels, construct_recorder, projection_env
from ledger.projections.state import EventRecord
from ledger.sqliterecorder import SQLITE_FACTORY

BASES = ("recorded", "occurred")


def _recorded_by(moment: datetime) -> Any:
    def keep(record: EventRecord) -> bool:
        stamp = record.state.get("timestamp")
        if stamp is None:
            return True
        when = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp))
        return when <= moment

    return keep


def _occurred_by(moment: datetime) -> Any:
    def keep(record: EventRecord) -> bool:
        at = record.state.get("occurred_at")
        return at is None or parse_iso(str(at)) <= moment

    return keep


@contextmanager
def replay_as_of(
    app: Application[Any],
    policy: PolicyCatalogue,
    as_of: datetime,
    *,
    basis: str = "recorded",
) -> Iterator[ReadModels]:
    """Read models holding only the events as of `as_of`, in a temporary store.

    The yielded `ReadModels` must be queried with `current=False` (it has been replayed
    already and has nothing further to catch up with).
    """
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}")
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    keep = _recorded_by(as_of) if basis == "recorded" else _occurred_by(as_of)
    folder = Path(tempfile.mkdtemp(prefix="ledger-asof-"))
    env = {
        "PERSISTENCE_MODULE": SQLITE_FACTORY,
        "SQLITE_DBNAME": str(folder / "asof.db"),
        "SQLITE_LOCK_TIMEOUT": "30",
        "CREATE_TABLE": "y",
    }
    recorder = construct_recorder(projection_env(env))
    models = ReadModels(app, recorder, policy, keep_ciphertext=False, event_filter=keep)
    try:
        models.rebuild()
        yield models
    finally:
        models.close()
        shutil.rmtree(folder, ignore_errors=True)
