"""SQLite persistence: the library's, with compiled statements kept and the write-ahead log
copied back in larger steps.

The library opens its connections with `cached_statements=True`, which `sqlite3` reads as
a cache of *one* statement: each statement that differs from the one before it on the
connection is compiled again. A batch of the read models runs some twenty in turn, an
append half a dozen, so nearly every execution compiled its SQL (2 % of a rebuild's
instructions). `LedgerSQLiteFactory` gives its datastore a pool whose connections keep
`STATEMENT_CACHE` of them; everything else is the library's.

SQLite copies its write-ahead log into the database file (a checkpoint, with an fsync)
whenever a commit leaves the log over 1,000 pages: with 1,000-command batches on a grown
store, every second or third batch. The connection that writes events raises that to
10,000 pages (40 MB), as do the other writers of the file (the read models, the audit
log): the pages of the table's end and of the primary key that several batches change
are then written once, and the fsyncs are fewer. At 300k events the event store's commits
went from 13.3 ms to 7.6 ms a batch. Commits sync the log as before (SQLite's default,
`synchronous=FULL`, which the library keeps), so nothing committed can be lost; the log
is longer between checkpoints, that is all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final
from uuid import UUID

from eventsourcing.persistence import InterfaceError, StoredEvent
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteFactory,
)
from eventsourcing.utils import Environment, EnvType

from ledger.eventrows import EventRow, RowSink
from ledger.sqlitetypes import register_adapters

WAL_CHECKPOINT_PAGES: Final = 10_000
STATEMENT_CACHE: Final = 256  # compiled statements a connection keeps (sqlite3's default 128)
SQLITE_FACTORY: Final = "ledger.sqliterecorder:LedgerSQLiteFactory"  # PERSISTENCE_MODULE


class StatementCachingPool(SQLiteConnectionPool):
    """The library's connection pool, with connections that keep compiled statements."""

    def _create_connection(self) -> SQLiteConnection:
        # As the library's own, but for `cached_statements` (it passes True, that is 1).
        try:
            raw = sqlite3.connect(
                database=self.db_name,
                uri=True,
                check_same_thread=False,
                isolation_level=None,  # autocommit: the library begins its transactions
                cached_statements=STATEMENT_CACHE,
                timeout=self.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT,
            )
        except (sqlite3.Error, TypeError) as e:
            raise InterfaceError(e) from e
        if not self.is_sqlite_memory_mode and not self.is_journal_mode_wal:
            mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
            if mode.lower() != "wal":
                raw.execute("PRAGMA journal_mode=WAL")
                self.journal_mode_was_changed_to_wal = True
            self.is_journal_mode_wal = True
        raw.row_factory = sqlite3.Row
        return SQLiteConnection(sqlite_conn=raw, max_age=self.max_age)


class LedgerSQLiteFactory(SQLiteFactory):
    """The library's SQLite factory, whose datastore pools statement-caching connections.

    Named by the ledger's environment as `PERSISTENCE_MODULE`; it reads the same settings.
    """

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        plain = self.datastore.pool  # made by the library's datastore, no connection yet
        self.datastore.pool = StatementCachingPool(
            db_name=plain.db_name,
            lock_timeout=plain.lock_timeout,
            pool_size=plain.pool_size,
            max_overflow=plain.max_overflow,
            pool_timeout=plain.pool_timeout,
            max_age=plain.max_age,
            pre_ping=plain.pre_ping,
        )
        plain.close()


class SQLiteEventRecorder(SQLiteApplicationRecorder):
    """`SQLiteApplicationRecorder`; a connection that writes events checkpoints every 40 MB."""

    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        register_adapters()
        super().__init__(datastore, **kwargs)

    @contextmanager
    def writing_rows(self) -> Iterator[RowSink]:
        """A transaction that takes events as rows, written as they come (`ledger.parallel`);
        an exception in the block rolls everything back. Writes to other stores alongside
        are PostgreSQL's alone."""
        with self.datastore.transaction(commit=True) as c:
            c.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")

            def write(rows: Sequence[EventRow]) -> None:
                c.executemany(
                    self.insert_events_statement,
                    [(subject.hex(), v, topic, state) for subject, v, topic, state in rows],
                )

            sink = RowSink(write)
            yield sink
            if sink.alongside:
                raise NotImplementedError("writes alongside the events on SQLite")

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """The events in one `executemany`, their notification ids worked out from the
        last one. The library sends an `INSERT` and reads `lastrowid` per event to return
        each id. A new rowid is one more than the largest (the log is never deleted
        from), and this transaction is the only writer, so a save's ids run on without a
        gap to the last."""
        # A setting of the connection, which the library's pool creates and reuses: set
        # on the connection that is about to commit (a no-op after the first time).
        c.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        if not stored_events:
            return []
        c.executemany(
            self.insert_events_statement,
            [
                (
                    s.originator_id.hex if isinstance(s.originator_id, UUID) else s.originator_id,
                    s.originator_version,
                    s.topic,
                    s.state,
                )
                for s in stored_events
            ],
        )
        c.execute("SELECT last_insert_rowid()")
        last = int(c.fetchone()[0])
        return list(range(last - len(stored_events) + 1, last + 1))
