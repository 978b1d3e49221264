"""The PostgreSQL application recorder: the library's, with large saves sent by COPY.

The library inserts a save's events as one statement over an array of a composite type,
which psycopg builds in Python: ~27 µs an event, a third of a 1,000-command batch. COPY
costs a few µs a row. Everything else stays the library's: the same table, the same
`EXCLUSIVE` table lock (so notification ids are committed in the order they are issued,
which readers that tail the log rely on), the same NOTIFY, the same errors (a duplicate
version is the library's `IntegrityError`, and the unit of work is retried). COPY
cannot tell which ids the defaults gave, so a block of ids is drawn from the column's
sequence first (one `nextval`, one `setval`) and written explicitly. The block is the
save's alone: every writer of the table takes the lock before it draws an id, and the
sequence caches none (the library creates it so); the unique index on `notification_id`
would refuse a duplicate anyway. Small saves (one command) keep the library's pipelined
insert, which is quicker for a handful of rows.

The rows go in COPY's binary format (about half the client's CPU of the text format,
which spells every byte of `state` in hex), each mapped from its domain event as it is
written (`ledger.persistence.MappedOnDemand`): the server inserts one chunk of rows while
the client encodes the next, instead of waiting for all of them.

The database role needs UPDATE on the notification id sequence (`setval`), beside the
USAGE the library's inserts need (the owner of the schema, the usual case, has both):

    GRANT UPDATE ON SEQUENCE <schema>.ledger_events_notification_id_seq TO <role>

A save may bring other writes that must commit with its events (`alongside`, a
`TransactionPart`: the key store's new keys and index rows). They are sent in the
pipeline that takes the table lock, after it, and checked before the events are written;
a failure of either rolls back both. A batch split between two processes is written
through one COPY that takes rows as they are made (`writing_rows`), its writes alongside
after the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, Protocol, cast

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg.sql import SQL, Identifier, Literal

from ledger.eventrows import EventRow, RowSink

COPY_FROM: Final = 32  # events in one save from which COPY is the quicker way


class TransactionPart(Protocol):
    """Writes that commit in the same transaction as a save's events."""

    def send(self, conn: Any) -> Callable[[], None]:
        """Queue statements on `conn` (in pipeline mode, the table locked); return a check
        to call once they have run, which raises to roll everything back."""
        ...


class CopyingPostgresRecorder(PostgresApplicationRecorder):
    """`PostgresApplicationRecorder`, but a save of many events is written with COPY."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        schema, table = datastore.schema, self.events_table_name
        self._reserve_ids = SQL(
            "SELECT setval(seq, nextval(seq) + %s - 1) AS last "
            "FROM pg_get_serial_sequence({0}, 'notification_id') AS seq"
        ).format(Literal(f'"{schema}"."{table}"'))
        self._copy_rows = SQL(
            "COPY {0}.{1} (notification_id, originator_id, originator_version, topic, state) "
            "FROM STDIN (FORMAT BINARY)"
        ).format(Identifier(schema), Identifier(table))
        self._copy_rows_with_default_ids = SQL(
            "COPY {0}.{1} (originator_id, originator_version, topic, state) "
            "FROM STDIN (FORMAT BINARY)"
        ).format(Identifier(schema), Identifier(table))
        self._copy_types = ["int8", datastore.originator_id_type, "int8", "text", "bytea"]
        # `writing_rows`: no ids (the column's default), a subject as its UUID's 16 bytes
        self._copy_row_types = ["bytea", "int8", "text", "bytea"]
        if datastore.originator_id_type != "uuid":  # `writing_rows` sends a UUID's bytes
            raise ValueError("this ledger's events table keys its subjects by uuid")

    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        alongside: TransactionPart | None = None,
        **kwargs: Any,
    ) -> Sequence[int] | None:
        ids: Sequence[int] | None
        if any(v is not None for v in kwargs.values()) or self.datastore.enable_db_functions:
            # Tracking records (which this application never writes), or the library's
            # database functions, which insert without the table lock that makes a
            # reserved block of ids safe: the library's own insert.
            if alongside is not None:
                raise NotImplementedError("writes alongside the library's own insert")
            ids = super().insert_events(stored_events, **kwargs)
        elif len(stored_events) >= COPY_FROM:
            ids = self._copy_events(stored_events, alongside)
        elif alongside is not None:
            ids = self._insert_with(stored_events, alongside)
        else:  # a handful of events: the library's pipelined insert
            ids = super().insert_events(stored_events)
        return ids

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _insert_with(
        self, stored_events: Sequence[StoredEvent], alongside: TransactionPart
    ) -> Sequence[int] | None:
        """The library's pipelined insert of a handful of events, with `alongside`: one
        round trip for all of it, and one for the commit."""
        with (
            self.datastore.get_connection() as conn,
            conn.pipeline() as pipeline,
            conn.transaction(),
            conn.cursor() as curs,
        ):
            self._insert_stored_events(curs, stored_events)  # lock, notice, insert
            check = alongside.send(conn)
            pipeline.sync()  # a failure is raised here, and rolls back
            check()
            return self._fetch_ids_after_insert_events(curs, stored_events)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _copy_events(
        self, stored_events: Sequence[StoredEvent], alongside: TransactionPart | None = None
    ) -> list[int]:
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            with conn.pipeline():  # the lock, the notice, the ids and the rest in one trip
                self._lock_table(curs)
                self._notify_channel(curs)
                curs.execute(self._reserve_ids, (len(stored_events),))
                check = alongside.send(conn) if alongside is not None else None
                row = curs.fetchone()
                if check is not None:
                    check()
            assert row is not None
            last = int(row["last"])
            ids = list(range(last - len(stored_events) + 1, last + 1))
            with curs.copy(self._copy_rows) as copy:
                copy.set_types(self._copy_types)
                for notification_id, e in zip(ids, stored_events, strict=True):
                    copy.write_row(
                        (notification_id, e.originator_id, e.originator_version, e.topic, e.state)
                    )
        return ids

    @contextmanager
    def writing_rows(self) -> Iterator[RowSink]:
        """A transaction that takes events as rows while the caller makes them, through
        one COPY: the server inserts what it has while the caller makes more (a batch
        split between processes, `ledger.parallel`). The ids are the column's default, in
        order (the table is locked from the start). What goes alongside is sent after
        the rows, in one round trip, and checked before the commit. An exception in the
        block rolls everything back. (A COPY that waits for rows is not idle: the
        server's limit on idle transactions does not end it.) Not retried here: the
        caller retries the unit of work.

        A row's subject is its UUID's 16 bytes, sent as they are: a binary COPY sends each
        field's bytes and the server reads them as its column's type, and a `uuid` is
        read from exactly these 16 bytes (what psycopg's own UUID dumper sends)."""
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            with conn.pipeline():
                self._lock_table(curs)
                self._notify_channel(curs)
            with curs.copy(self._copy_rows_with_default_ids) as copy:
                copy.set_types(self._copy_row_types)

                def write(rows: Sequence[EventRow]) -> None:
                    for row in rows:
                        copy.write_row(row)

                sink = RowSink(write)
                yield sink
            if sink.alongside:
                with conn.pipeline():
                    checks = [cast(TransactionPart, p).send(conn) for p in sink.alongside]
                for check in checks:
                    check()
