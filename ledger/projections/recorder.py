"""Tracking recorders that also hold the read-model tables (SQLite and PostgreSQL).

They extend the library's `SQLiteTrackingRecorder` / `PostgresTrackingRecorder`, so the
rows a batch changes and its tracking position are written in one transaction with the
library's own tracking statement: a batch is applied exactly once, and a crash in the
middle leaves neither rows nor position behind. Writers are serialised (SQLite `BEGIN
IMMEDIATE`, a PostgreSQL transaction-level advisory lock), and a batch is only applied
if the position is still the one it was read after, so CLI catch-ups, a worker and a
rebuild can run at the same time without applying an event twice.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import chain
from operator import itemgetter
from typing import Any

import orjson
from eventsourcing.persistence import InfrastructureFactory, Tracking, TrackingRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresFactory, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteFactory, SQLiteTrackingRecorder

from ledger.domain.policy import PolicyCatalogue
from ledger.projections.schema import (
    COUNTERS,
    KEYED,
    LOGS,
    META,
    SUBJECTS,
    TRACKING_TABLE,
    Table,
    column_types,
    create_statements,
    drop_statements,
    index_statements,
)
from ledger.projections.state import BatchState, EventRecord, SubjectState, subjects_to_load
from ledger.sqliterecorder import WAL_CHECKPOINT_PAGES
from ledger.sqlitetypes import register_adapters

Row = dict[str, Any]
Write = tuple[Table, str, Sequence[tuple[Any, ...]]]  # table, mode, rows
# subject ids -> the notification id of each one's registration (those registered)
Registrations = Callable[[Sequence[str]], dict[str, int]]
ROWS_PER_INSERT = 32  # new rows per SQLite INSERT (16 and 64 counted a little more work)
CHUNK = 400  # ids per IN (...) list: well under SQLite's bound-parameter limit
FINGERPRINT = "fingerprint"  # rm_meta: what code and catalogue built the tables
INDEXES_PENDING = "indexes_pending"  # rm_meta: a rebuild has not created its indexes yet


class Cursor:
    """The few cursor operations the read models need, with `?` placeholders everywhere."""

    def __init__(self, raw: Any, dialect: str) -> None:
        self.raw = raw
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgres" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.raw.execute(self._sql(sql), params)

    def fetchall(self) -> list[Row]:
        return [dict(row) for row in self.raw.fetchall()]

    def write(self, table: Table, mode: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Write many rows at once: `insert`, `upsert`, `delete` (by key) or `count` (add).

        New rows go to PostgreSQL with binary COPY, several times cheaper per row than any
        statement the driver can pipeline (and a little cheaper than text COPY on both
        ends); the few upserts and deletes of a batch (rows of subjects stored before) are
        executed as prepared statements. On SQLite new rows go `ROWS_PER_INSERT` to an
        `INSERT` (each execution of a statement has a fixed cost: its start and end in
        SQLite, the GIL given up and taken back): 2.8 % fewer instructions a rebuild.
        """
        if not rows:
            return
        statement = _STATEMENTS[mode][table.name]
        if self.dialect == "sqlite":
            if mode == "insert" and len(rows) >= ROWS_PER_INSERT:
                whole = len(rows) - len(rows) % ROWS_PER_INSERT
                self.raw.executemany(
                    _INSERT_MANY[table.name],
                    [
                        list(chain.from_iterable(rows[start : start + ROWS_PER_INSERT]))
                        for start in range(0, whole, ROWS_PER_INSERT)
                    ],
                )
                rows = rows[whole:]
            self.raw.executemany(statement, rows)
        elif mode == "insert":
            with self.raw.copy(_COPY[table.name]) as copy:
                copy.set_types(_COPY_TYPES[table.name])
                for row in rows:
                    copy.write_row(row)
        else:
            self.raw.executemany(self._sql(statement), rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.execute(sql, params)
        return self.fetchall()

    @contextmanager
    def pipelined(self) -> Iterator[None]:
        """Statements sent together: on PostgreSQL one round trip for all of them (pipeline
        mode; a result asked for inside sends what is queued), on SQLite as they come."""
        if self.dialect == "sqlite":
            yield
            return
        with self.raw.connection.pipeline():
            yield

    def write_all(self, writes: Sequence[Write]) -> None:
        """Several writes; on PostgreSQL the COPYs first, then every statement in one
        pipeline (one round trip, where each `executemany` waited for its own)."""
        if self.dialect == "sqlite":
            for table, mode, rows in writes:
                self.write(table, mode, rows)
            return
        statements = [w for w in writes if w[1] != "insert"]
        for table, mode, rows in writes:
            if mode == "insert":
                self.write(table, mode, rows)
        if statements:
            with self.pipelined():
                for table, mode, rows in statements:
                    self.write(table, mode, rows)

    def query_many(self, queries: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Row]]:
        """Several queries; on PostgreSQL sent together (pipeline mode), one round trip."""
        if self.dialect == "sqlite":
            return [self.query(sql, params) for sql, params in queries]
        connection = self.raw.connection
        with self.pipelined():  # nested in the reader's own pipeline: no harm
            cursors = []
            for sql, params in queries:
                cursor = connection.cursor()
                cursor.execute(self._sql(sql), params)
                cursors.append(cursor)
        found = []
        for cursor in cursors:
            with cursor:
                found.append([dict(row) for row in cursor.fetchall()])
        return found


def _upsert(table: Table) -> str:
    cols = table.column_names
    updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in table.key)
    return (
        f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
        f"ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET {updates}"
    )


def _insert(table: Table) -> str:
    cols = table.column_names
    return f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


def _insert_many(table: Table, count: int) -> str:
    cols = table.column_names
    values = ", ".join([f"({', '.join('?' * len(cols))})"] * count)
    return f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES {values}"


def _delete(table: Table) -> str:
    return f"DELETE FROM {table.name} WHERE sid = ? AND {table.key2} = ?"


_COUNT = (
    "INSERT INTO rm_counters (metric, a, b, n) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (metric, a, b) DO UPDATE SET n = rm_counters.n + excluded.n"
)
_UPSERT = {t.name: _upsert(t) for t in (SUBJECTS, *KEYED, META)}
_STATEMENTS: dict[str, dict[str, str]] = {
    "insert": {t.name: _insert(t) for t in (SUBJECTS, *KEYED, *LOGS)},
    "upsert": {t.name: _upsert(t) for t in (SUBJECTS, *KEYED)},
    "delete": {t.name: _delete(t) for t in KEYED},
    "count": {COUNTERS.name: _COUNT},
}
_INSERT_MANY = {t.name: _insert_many(t, ROWS_PER_INSERT) for t in (SUBJECTS, *KEYED, *LOGS)}
_COPY = {
    t.name: f"COPY {t.name} ({', '.join(t.column_names)}) FROM STDIN (FORMAT BINARY)"
    for t in (SUBJECTS, *KEYED, *LOGS)
}
_COPY_TYPES = {t.name: column_types("postgres", t) for t in (SUBJECTS, *KEYED, *LOGS)}


def _mark_rebuild(cur: Cursor) -> None:
    """Say in `rm_meta` that a rebuild owes its indexes, and that it is alive now."""
    cur.execute(_UPSERT[META.name], (INDEXES_PENDING, datetime.now(UTC).isoformat()))


def _encoder(table: Table) -> Callable[[Row], tuple[Any, ...]]:
    """A function turning a row dict into a parameter tuple (JSON columns as text)."""
    names = table.column_names
    assert len(names) > 1, table.name  # itemgetter of one name would give no tuple
    getter = itemgetter(*names)
    json_at = [i for i, name in enumerate(names) if name in table.json]
    if not json_at:
        return getter

    def encode(row: Row) -> tuple[Any, ...]:
        values = list(getter(row))
        for i in json_at:
            value = values[i]
            if value is not None:
                values[i] = orjson.dumps(value).decode()
        return tuple(values)

    return encode


def decode_row(table: Table, row: Row) -> Row:
    """A stored row as Python values: JSON parsed, booleans as bool."""
    for name in table.json:
        value = row.get(name)
        if value is not None:
            row[name] = orjson.loads(value)
    for name in table.booleans:
        value = row.get(name)
        if value is not None:
            row[name] = bool(value)
    return row


_ENCODE = {t.name: _encoder(t) for t in (SUBJECTS, *KEYED, *LOGS)}
_LOG_TABLES = {t.name: t for t in LOGS}


def writes_of(batch: BatchState) -> list[Write]:
    """What a batch changes, as rows for `Cursor.write`: new subjects' rows are inserted,
    stored subjects' rows deleted or upserted, log rows inserted, counters added."""
    out: list[Write] = []
    new = [s for s in batch.subjects.values() if s.new]
    stored = [s for s in batch.subjects.values() if not s.new]
    encode = _ENCODE[SUBJECTS.name]
    out.append((SUBJECTS, "insert", [encode(s.row) for s in new]))
    out.append((SUBJECTS, "upsert", [encode(s.row) for s in stored]))
    # a new subject has rows in a few of the keyed tables: visit only those
    fresh: dict[str, list[tuple[Any, ...]]] = {table.name: [] for table in KEYED}
    for s in new:
        for name, rows in s.tables.items():
            if rows:
                fresh[name].extend(map(_ENCODE[name], rows.values()))
    for table in KEYED:
        name = table.name
        deletes = [(s.sid, key) for s in stored for key in s.deleted.get(name, ())]
        encode = _ENCODE[name]
        changed = [encode(row) for s in stored for row in s.changed_rows(name)]
        out.append((table, "delete", deletes))
        out.append((table, "insert", fresh[name]))
        out.append((table, "upsert", changed))
    for name, log_rows in batch.logs.items():
        encode = _ENCODE[name]
        out.append((_LOG_TABLES[name], "insert", [encode(r) for r in log_rows]))
    out.append((COUNTERS, "count", [(*k, n) for k, n in sorted(batch.counters.items())]))
    return [w for w in out if w[2]]


class ReadModelRecorder(TrackingRecorder):
    """The read models' tables and the tracking position, for one backend."""

    dialect: str = ""
    application_name = "Ledger"
    in_rebuild = False  # True inside `rebuilding()`
    _registered_at: Registrations | None = None  # set inside `rebuilding()`

    # -- transactions (per backend) ---------------------------------------------------

    @abstractmethod
    @contextmanager
    def writer(self) -> Iterator[Cursor]:
        """An exclusive write transaction (one writer of read models at a time)."""

    @abstractmethod
    @contextmanager
    def reader(self) -> Iterator[Cursor]:
        """A read transaction that sees one consistent state of every table."""

    @contextmanager
    def rebuilding(self, registered_at: Registrations) -> Iterator[None]:
        """While a rebuild applies its batches: each batch also renews the rebuild's mark in
        `rm_meta` (see `reset`), so other processes can tell a live rebuild from a dead one,
        and stored subjects are found by their key, the position of their registration
        (`registered_at` reads it from the event store), as the index on subject ids comes
        with the other indexes at the end. Backends add settings for writing many batches
        in a row."""
        self.in_rebuild = True
        self._registered_at = registered_at
        try:
            yield
        finally:
            self.in_rebuild = False
            self._registered_at = None

    @abstractmethod
    def _tracking_position(self, cursor: Cursor) -> int:
        """The tracked position inside a transaction (0 before the first batch)."""

    @abstractmethod
    def _track(self, cursor: Cursor, position: int) -> None:
        """Record the position with the library's tracking statement."""

    @abstractmethod
    def _reset_tracking(self, cursor: Cursor) -> None:
        """Forget the position (rebuild)."""

    # -- schema -----------------------------------------------------------------------

    def create_read_models(self) -> None:
        """Create what is missing: tables, and indexes unless a rebuild has them pending."""
        with self.writer() as cur:
            for statement in create_statements(self.dialect, indexes=False):
                cur.execute(statement)
            if not cur.query("SELECT value FROM rm_meta WHERE name = ?", (INDEXES_PENDING,)):
                for statement in index_statements():
                    cur.execute(statement)

    def stored_meta(self) -> dict[str, str]:
        """What the tables say about themselves: their fingerprint, unfinished indexes."""
        with self.reader() as cur:
            return {str(r["name"]): str(r["value"]) for r in cur.query("SELECT * FROM rm_meta")}

    def stored_fingerprint(self) -> str | None:
        return self.stored_meta().get(FINGERPRINT)

    def reset(self, fingerprint: str, *, indexes: bool = True) -> None:
        """Drop every read model, recreate it empty and forget the position (one transaction).

        `indexes=False` (a rebuild) leaves the secondary indexes to `create_indexes`, and
        says so in `rm_meta` until then, with the time (renewed by every batch of the
        rebuild): a mark that stops being renewed is a rebuild that died, whose indexes
        another process creates.
        """
        with self.writer() as cur:
            for statement in drop_statements():
                cur.execute(statement)
            for statement in create_statements(self.dialect, indexes=indexes):
                cur.execute(statement)
            self._reset_tracking(cur)
            cur.execute(_UPSERT[META.name], (FINGERPRINT, fingerprint))
            if not indexes:
                _mark_rebuild(cur)

    def create_indexes(self) -> None:
        """Create the secondary indexes a rebuild left out (nothing if they are there)."""
        with self.writer() as cur:
            for statement in index_statements():
                cur.execute(statement)
            cur.execute("DELETE FROM rm_meta WHERE name = ?", (INDEXES_PENDING,))

    # -- position ---------------------------------------------------------------------

    def position(self) -> int:
        return self.max_tracking_id(self.application_name) or 0

    def position_in(self, cursor: Cursor) -> int:
        """The position as seen by an open read (the state that read sees)."""
        return self._tracking_position(cursor)

    # -- applying ---------------------------------------------------------------------

    def apply(
        self,
        records: Sequence[EventRecord],
        position: int,
        *,
        expected: int | None,
        policy: PolicyCatalogue,
        keep_ciphertext: bool = True,
    ) -> bool:
        """Apply one batch and move the position to `position`, all or nothing.

        `expected` is the position the batch was read after; if another writer moved it
        meanwhile nothing is written and False is returned (the caller reads again).
        """
        with self.writer() as cur:
            current = self._tracking_position(cur)
            if (expected is not None and current != expected) or position <= current:
                return False
            batch = BatchState(policy, keep_ciphertext=keep_ciphertext)
            batch.subjects.update(self.load_subjects(cur, subjects_to_load(records)))
            for record in records:
                batch.apply(record)
            batch.finish()
            self._flush(cur, batch)
            with cur.pipelined():
                self._track(cur, position)
                if self.in_rebuild:
                    _mark_rebuild(cur)
        return True

    def load_subjects(self, cur: Cursor, subject_ids: Sequence[str]) -> dict[str, SubjectState]:
        """The stored rows of these subjects (every keyed table), by subject id."""
        found: dict[str, SubjectState] = {}
        for start in range(0, len(subject_ids), CHUNK):
            chunk = subject_ids[start : start + CHUNK]
            keys: Sequence[Any] = chunk
            column = "subject"
            if self._registered_at is not None:  # a rebuild, before the index on subject ids
                keys, column = list(self._registered_at(chunk).values()), "sid"
                if not keys:
                    continue
            marks = ", ".join("?" * len(keys))
            by_sid: dict[int, SubjectState] = {}
            for row in cur.query(f"SELECT * FROM rm_subjects WHERE {column} IN ({marks})", keys):
                state = SubjectState(row=decode_row(SUBJECTS, row), tables={})
                state.tables = {t.name: {} for t in KEYED}
                found[row["subject"]] = state
                by_sid[int(row["sid"])] = state
            if not by_sid:
                continue
            sids = list(by_sid)
            marks = ", ".join("?" * len(sids))
            found_rows = cur.query_many(
                [
                    (f"SELECT * FROM {table.name} WHERE sid IN ({marks}) ORDER BY seq", sids)
                    for table in KEYED
                ]
            )
            for table, rows in zip(KEYED, found_rows, strict=True):
                for row in rows:
                    state = by_sid[int(row["sid"])]
                    state.tables[table.name][row[table.key2]] = decode_row(table, row)
        return found

    def _flush(self, cur: Cursor, batch: BatchState) -> None:
        cur.write_all(writes_of(batch))

    # -- reading ----------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.reader() as cur:
            return cur.query(sql, params)


class SQLiteReadModelRecorder(ReadModelRecorder, SQLiteTrackingRecorder):
    """Read models in the event store's SQLite file, tracked in a table of their own."""

    dialect = "sqlite"
    datastore: SQLiteDatastore

    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        register_adapters()
        super().__init__(datastore, **kwargs)
        # The library's statements name a shared `tracking` table; the read models keep
        # theirs apart, like the PostgreSQL factory does (`<projection>_tracking`).
        t = TRACKING_TABLE
        self.insert_tracking_statement = (
            f"INSERT INTO {t} VALUES (:application_name, :notification_id) "
            "ON CONFLICT (application_name) DO UPDATE "
            "SET notification_id = :notification_id "
            f"WHERE {t}.notification_id < :notification_id "
            "RETURNING notification_id"
        )
        self.select_max_tracking_id_statement = (
            f"SELECT MAX(notification_id) FROM {t} WHERE application_name=?"
        )

    def construct_create_table_statements(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} ("
            "application_name TEXT, notification_id INTEGER, "
            "PRIMARY KEY (application_name)) WITHOUT ROWID"
        ]

    def create_table(self) -> None:
        super().create_table()
        self.create_read_models()

    @contextmanager
    def writer(self) -> Iterator[Cursor]:
        with self.datastore.get_connection(commit=True) as conn:
            raw = conn.cursor()
            # WAL with synchronous=NORMAL stays atomic and consistent; a power cut may only
            # lose the newest batches, and their tracking position with them, so they are
            # applied again. The events themselves are written by the application's own
            # connections, which this setting does not touch.
            raw.execute("PRAGMA synchronous=NORMAL")
            raw.execute("PRAGMA cache_size=-65536")
            # Debian's SQLite zeroes every freed page by default; dropping the tables at a
            # rebuild then cost ~0.4 s per 100k events. Nothing here needs it: a read
            # model row is derived from the immutable event log, which keeps the same
            # sealed values (unreadable once their key is shredded) and metadata for good.
            # `FAST` still clears freed cells where that costs no extra writes.
            raw.execute("PRAGMA secure_delete=FAST")
            # The file's write-ahead log is copied back every 40 MB, as by the connections
            # that write events (`ledger.sqliterecorder`): at SQLite's 4 MB a rebuild spent
            # a sixth of its time on the copies' fsyncs, and a catch-up after each write
            # would copy back what the event store's setting let grow.
            raw.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            raw.execute("BEGIN IMMEDIATE")
            try:
                yield Cursor(raw, "sqlite")
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @contextmanager
    def rebuilding(self, registered_at: Registrations) -> Iterator[None]:
        """Also copy the write-ahead log back once at the end, where a rebuild leaves up to
        40 MB of it."""
        try:
            with super().rebuilding(registered_at):
                yield
        finally:
            with self.datastore.get_connection(commit=True) as conn:
                conn.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")

    @contextmanager
    def reader(self) -> Iterator[Cursor]:
        with self.datastore.transaction(commit=False) as raw:
            yield Cursor(raw, "sqlite")

    def _tracking_position(self, cursor: Cursor) -> int:
        return self._max_tracking_id(self.application_name, cursor.raw) or 0

    def _track(self, cursor: Cursor, position: int) -> None:
        self._insert_tracking(cursor.raw, Tracking(self.application_name, position))

    def _reset_tracking(self, cursor: Cursor) -> None:
        cursor.execute(
            f"DELETE FROM {TRACKING_TABLE} WHERE application_name = ?", (self.application_name,)
        )


class PostgresReadModelRecorder(ReadModelRecorder, PostgresTrackingRecorder):
    """Read models in the event store's PostgreSQL schema."""

    dialect = "postgres"
    datastore: PostgresDatastore

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        digest = hashlib.sha256(f"{datastore.schema}/{TRACKING_TABLE}".encode()).digest()
        self._lock_key = int.from_bytes(digest[:8], "big", signed=True)
        self._search_path = f'SET LOCAL search_path TO "{datastore.schema}"'

    def create_table(self) -> None:
        super().create_table()
        self.create_read_models()

    @contextmanager
    def writer(self) -> Iterator[Cursor]:
        with self.datastore.get_connection() as conn, conn.transaction():
            raw = conn.cursor()
            with conn.pipeline():  # one round trip for the three
                raw.execute(self._search_path)
                # Like synchronous=NORMAL on SQLite: a crash may lose the newest batches,
                # and their tracking position with them, so they are applied again; never
                # half.
                raw.execute("SET LOCAL synchronous_commit TO OFF")
                raw.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            yield Cursor(raw, "postgres")

    @contextmanager
    def reader(self) -> Iterator[Cursor]:
        # Pipeline mode: the preamble travels with the first query, and `query_many`
        # sends a whole subject's queries in one round trip.
        with (
            self.datastore.get_connection() as conn,
            conn.pipeline(),
            conn.transaction(force_rollback=True),
        ):
            raw = conn.cursor()
            raw.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            raw.execute(self._search_path)
            yield Cursor(raw, "postgres")

    def _tracking_position(self, cursor: Cursor) -> int:
        return self._max_tracking_id(self.application_name, cursor.raw) or 0

    def _track(self, cursor: Cursor, position: int) -> None:
        self._insert_tracking(cursor.raw, Tracking(self.application_name, position))

    def _reset_tracking(self, cursor: Cursor) -> None:
        cursor.execute(
            f'DELETE FROM "{self.datastore.schema}".{self.tracking_table_name} '
            "WHERE application_name = ?",
            (self.application_name,),
        )


def recorder_class(factory: InfrastructureFactory[Any]) -> type[ReadModelRecorder]:
    """The read-model recorder for the event store's persistence (its factory)."""
    if isinstance(factory, PostgresFactory):
        return PostgresReadModelRecorder
    if isinstance(factory, SQLiteFactory):
        return SQLiteReadModelRecorder
    raise ValueError(f"read models need SQLite or PostgreSQL, not {type(factory).__name__}")
