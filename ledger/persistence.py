"""How this ledger's events are stored: the transcoder, and the library's environment.

Events hold plain JSON values (orjson); the environment chooses the backend, the
recorder class and the aggregate cache for the configured database.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, overload
from uuid import UUID

import orjson
from eventsourcing.persistence import (
    EventStore,
    Mapper,
    Notification,
    Recording,
    StoredEvent,
    Transcoder,
)

from ledger.config import Settings
from ledger.sqliterecorder import SQLITE_FACTORY


class OrjsonTranscoder(Transcoder):
    """Events hold plain JSON values; only the library's own times are datetimes.

    Those are an event's `timestamp` and, inside a snapshot's `state`, the aggregate's
    `_created_on` and `_modified_on`.
    """

    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def decode(self, data: bytes) -> Any:
        state = orjson.loads(data)
        _to_datetime(state, "timestamp")
        inner = state.get("state")
        if isinstance(inner, dict) and "topic" in state:
            _to_datetime(inner, "_created_on")
            _to_datetime(inner, "_modified_on")
        return state


def _to_datetime(state: dict[str, Any], key: str) -> None:
    value = state.get(key)
    if isinstance(value, str):
        state[key] = datetime.fromisoformat(value)


def application_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing environment for the configured database."""
    db = settings.database
    if db.backend == "sqlite":
        assert db.sqlite_path is not None
        db.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": SQLITE_FACTORY,
            "SQLITE_DBNAME": str(db.sqlite_path),
            "SQLITE_LOCK_TIMEOUT": "30",
            "CREATE_TABLE": "y",
            "AGGREGATE_CACHE_MAXSIZE": "1000",
            "AGGREGATE_CACHE_FASTFORWARD": "n",
            "APPLICATION_RECORDER_TOPIC": "ledger.sqliterecorder:SQLiteEventRecorder",
        }
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": db.dbname,
        "POSTGRES_HOST": db.host,
        "POSTGRES_PORT": str(db.port),
        "POSTGRES_USER": db.user,
        "POSTGRES_PASSWORD": db.password,
        "POSTGRES_POOL_SIZE": "5",
        "POSTGRES_MAX_OVERFLOW": "10",
        "CREATE_TABLE": "y",
        "AGGREGATE_CACHE_MAXSIZE": "1000",
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "APPLICATION_RECORDER_TOPIC": "ledger.pgrecorder:CopyingPostgresRecorder",
    }
    if db.schema:
        env["POSTGRES_SCHEMA"] = db.schema
    return env


class MappedOnDemand(Sequence[StoredEvent]):
    """Domain events, each mapped to its stored form when a recorder first reads it.

    A recorder that streams its rows (COPY) then sends the first while later ones are
    still being encoded, and the database works on them meanwhile: the server's share of
    a large save overlaps the client's, where it used to follow it.
    """

    def __init__(self, mapper: Mapper[UUID], events: Sequence[Any]) -> None:
        self._mapper = mapper
        self._events = events
        self._mapped: list[StoredEvent] = []

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[StoredEvent]:
        mapped = self._mapped
        for index, event in enumerate(self._events):
            if index == len(mapped):
                mapped.append(self._mapper.to_stored_event(event))
            yield mapped[index]

    @overload
    def __getitem__(self, index: int) -> StoredEvent: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[StoredEvent]: ...
    def __getitem__(self, index: int | slice) -> StoredEvent | Sequence[StoredEvent]:
        if len(self._mapped) < len(self._events):
            for _ in self:
                pass
        return self._mapped[index]


class LedgerEventStore(EventStore[UUID]):
    """The library's event store, with `write`: store events without a `Recording` each.

    The library's `put` returns a `Recording` (a frozen dataclass holding another, a
    `Notification`) for every event it stores; the ledger's commands read none of them,
    and making them was 6.5 % of a 1,000-command batch's instructions. `put` still
    answers with them, for anything that asks.

    `streaming`: hand the recorder events mapped on demand (`MappedOnDemand`), for a
    recorder that sends each as it comes (PostgreSQL's COPY: the server inserts one chunk
    while the client encodes the next). SQLite works in this process, where that would
    only add steps.
    """

    def __init__(self, mapper: Mapper[UUID], recorder: Any, *, streaming: bool = False) -> None:
        super().__init__(mapper=mapper, recorder=recorder)
        self.streaming = streaming

    def _stored(self, domain_events: Sequence[Any]) -> Sequence[StoredEvent]:
        if self.streaming:
            return MappedOnDemand(self.mapper, domain_events)
        return list(map(self.mapper.to_stored_event, domain_events))

    def write(self, domain_events: Sequence[Any], **kwargs: Any) -> Sequence[int] | None:
        """Store the events (one transaction); their notification ids, as the recorder
        returns them."""
        return self.recorder.insert_events(self._stored(domain_events), **kwargs)

    def put(self, domain_events: Sequence[Any], **kwargs: Any) -> list[Recording[UUID]]:
        stored_events = self._stored(domain_events)
        notification_ids = self.recorder.insert_events(stored_events, **kwargs)
        if not notification_ids:
            return []
        assert len(notification_ids) == len(stored_events)
        return [
            Recording(
                event,
                Notification(
                    originator_id=stored.originator_id,
                    originator_version=stored.originator_version,
                    topic=stored.topic,
                    state=stored.state,
                    id=notification_id,
                ),
            )
            for event, stored, notification_id in zip(
                domain_events, stored_events, notification_ids, strict=True
            )
        ]
