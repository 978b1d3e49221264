"""`MappedOnDemand`: a save's events are mapped once each, as a recorder reads them.
`LedgerEventStore`: `write` stores events without recordings, `put` with them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import Mapper

from ledger.facade import Ledger
from ledger.persistence import LedgerEventStore, MappedOnDemand, OrjsonTranscoder
from ledger.policies import load_policy
from tests.command_support import customers, registered_customer

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


class CountingMapper(Mapper[uuid.UUID]):
    def __init__(self) -> None:
        super().__init__(transcoder=OrjsonTranscoder())
        self.mapped: list[Any] = []

    def to_stored_event(self, domain_event: Any) -> Any:
        self.mapped.append(domain_event)
        return super().to_stored_event(domain_event)


def _events(count: int) -> list[Any]:
    policy = load_policy(None)
    return [event for _ in range(count) for event in registered_customer(policy).collect_events()]


def test_nothing_is_mapped_until_read_and_each_event_once() -> None:
    mapper = CountingMapper()
    events = _events(5)
    stored = MappedOnDemand(mapper, events)
    assert len(stored) == 5 and mapper.mapped == []
    first = next(iter(stored))
    assert mapper.mapped == events[:1]
    everything = list(stored)
    assert everything[0] is first and list(stored) == everything  # not mapped again
    assert mapper.mapped == events
    assert [s.originator_id for s in everything] == [e.originator_id for e in events]


def test_indexing_and_slicing_see_the_events_mapped_once() -> None:
    mapper = CountingMapper()
    events = _events(4)
    stored = MappedOnDemand(mapper, events)
    assert stored[2].originator_id == events[2].originator_id
    assert [s.originator_id for s in stored[1:3]] == [e.originator_id for e in events[1:3]]
    assert stored[-1] is list(stored)[-1]
    assert len(mapper.mapped) == 4


def test_a_save_without_recordings_stores_the_same_events(ledger: Ledger) -> None:
    """The commands' unit of work saves with `recordings=False`; the library's `save`
    contract (a `Recording` per event, with its notification id) still holds."""
    app = ledger.app
    assert isinstance(app.events, LedgerEventStore)
    assert app.events.streaming == (ledger.settings.database.backend == "postgres")
    recorded, quiet = registered_customer(app.policy), registered_customer(app.policy)
    recordings = app.save(recorded)
    assert [r.domain_event.originator_id for r in recordings] == [recorded.id]
    assert recordings[0].notification.id == ledger.max_position()
    assert app.save(quiet, recordings=False) == []
    assert ledger.max_position() == recordings[0].notification.id + 1
    for subject in (recorded, quiet):  # stored, and cached as saved
        assert app.repository.get(subject.id).version == 1
        assert [e.originator_version for e in app.events.get(subject.id)] == [1]


def test_a_save_returns_the_notification_ids_the_events_were_stored_under(
    ledger: Ledger,
) -> None:
    """On SQLite the ids are worked out from the last one after a single `executemany`
    (`SQLiteEventRecorder`); on PostgreSQL a block of ids is drawn under the table lock.
    Either way each returned id is the one the event is read back under."""
    app = ledger.app
    ledger.execute_many(customers(1))
    for count in (1, 3, 40):  # PostgreSQL COPYs a save of 32 events or more
        subjects = [registered_customer(app.policy) for _ in range(count)]
        recordings = app.save(*subjects)
        ids = [r.notification.id for r in recordings]
        assert ids == list(range(ids[0], ids[0] + count)) and ids[-1] == ledger.max_position()
        stored = {n.id: n.originator_id for n in app.recorder.select_notifications(ids[0], count)}
        assert stored == {r.notification.id: r.domain_event.originator_id for r in recordings}
