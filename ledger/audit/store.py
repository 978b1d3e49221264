"""Where the Merkle log lives: tables beside the events, in the event store's own database.

`audit_tree` holds every complete subtree hash by (level, index); level 0 rows are the
leaves and carry the notification id they commit to. `audit_checkpoints` keeps every
signed checkpoint. Living in the same database means one backup holds events and log
together, and the sealer reads new events and writes their leaves in one transaction.

The store has its own connection (SQLite or psycopg), guarded by a lock, so it can be
shared by the threads of a server process. A PostgreSQL connection the server closed (a
restart, a failover, `pg_terminate_backend`) is replaced when the next transaction begins;
one lost inside a transaction fails that transaction only.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

from ledger.audit.merkle import HASH_SIZE
from ledger.config import DatabaseURL
from ledger.reconnect import Reconnecting
from ledger.sqliterecorder import WAL_CHECKPOINT_PAGES
from ledger.sqlitetypes import register_adapters

__all__ = ["AuditError", "AuditStore", "EventRow", "StoredCheckpoint"]

PAGE = 5000

DERIVED_LEVELS = (1, 2)
"""Levels that are not stored: a node there is rebuilt from its 2 or 4 stored leaves.

Levels 1 and 2 hold 3/4 of all interior nodes; leaving them out nearly halves the rows
sealing writes, and a proof still reads O(log n) rows (at most 6 more, in the same query).
"""


def is_stored(level: int) -> bool:
    return level not in DERIVED_LEVELS


def stored_coords(level: int, index: int) -> list[tuple[int, int]]:
    """The stored rows a node is read from: itself, or the leaves below it."""
    if is_stored(level):
        return [(level, index)]
    return [(0, leaf) for leaf in range(index << level, (index + 1) << level)]


def derive(level: int, index: int, read: Callable[[int, int], bytes]) -> bytes:
    """A node's hash from stored rows (`read(level, index)`), rebuilding derived levels."""
    if is_stored(level):
        return read(level, index)
    left = derive(level - 1, 2 * index, read)
    right = derive(level - 1, 2 * index + 1, read)
    return hashlib.sha256(b"\x01" + left + right).digest()


class AuditError(Exception):
    """The audit log cannot do what was asked (damaged store, refused checkpoint ...)."""


class EventRow(NamedTuple):
    """One stored event as the log reads it: the raw columns, nothing decoded."""

    notification_id: int
    originator_id: UUID | str
    originator_version: int
    topic: str
    state: bytes


@dataclass(frozen=True)
class StoredCheckpoint:
    tree_size: int
    root: bytes
    note: str
    created_at: str


_SCHEMA = {
    "sqlite": [
        "CREATE TABLE IF NOT EXISTS audit_tree (level INTEGER NOT NULL, idx INTEGER NOT NULL, "
        "hash BLOB NOT NULL, notification_id INTEGER, PRIMARY KEY (level, idx)) WITHOUT ROWID",
        "CREATE UNIQUE INDEX IF NOT EXISTS audit_tree_notification ON audit_tree "
        "(notification_id) WHERE notification_id IS NOT NULL",
        "CREATE TABLE IF NOT EXISTS audit_checkpoints (tree_size INTEGER PRIMARY KEY, "
        "root BLOB NOT NULL, note TEXT NOT NULL, created_at TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS audit_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
    "postgres": [
        "CREATE TABLE IF NOT EXISTS audit_tree (level SMALLINT NOT NULL, idx BIGINT NOT NULL, "
        "hash BYTEA NOT NULL, notification_id BIGINT, PRIMARY KEY (level, idx))",
        "CREATE UNIQUE INDEX IF NOT EXISTS audit_tree_notification ON audit_tree "
        "(notification_id) WHERE notification_id IS NOT NULL",
        "CREATE TABLE IF NOT EXISTS audit_checkpoints (tree_size BIGINT PRIMARY KEY, "
        "root BYTEA NOT NULL, note TEXT NOT NULL, created_at TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS audit_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
}

TABLES = ("audit_tree", "audit_checkpoints", "audit_meta")


class AuditStore(Reconnecting):
    """SQL access to the log's tables and to the events they commit to."""

    def __init__(
        self,
        conn: Any,
        dialect: str,
        events_table: str,
        lock_key: int,
        connect: Callable[[], Any] | None = None,
    ) -> None:
        """`connect` makes a new connection like `conn` (search_path set), to replace one
        the server closed; without it a closed connection stays closed."""
        self.conn = conn
        self.connect = connect
        self.dialect = dialect
        self.events_table = events_table
        self._lock_key = lock_key
        self._lock = threading.RLock()
        self._in_tx = False
        self._create()

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, database: DatabaseURL, events_table: str = "stored_events") -> AuditStore:
        """Open the log of the event store at `database` (tables created on first use)."""
        if database.backend == "sqlite":
            assert database.sqlite_path is not None
            return cls.open_sqlite(database.sqlite_path, events_table)
        import psycopg

        schema = database.schema or "public"

        def connect() -> Any:
            conn = psycopg.connect(database.conninfo(), autocommit=True)
            conn.execute(f'SET search_path TO "{schema}"')
            return conn

        conn = connect()
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        digest = hashlib.sha256(f"ledger.audit:{database.dbname}:{schema}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        return cls(conn, "postgres", f'"{schema}"."{events_table}"', key, connect)

    @classmethod
    def open_sqlite(cls, path: Path, events_table: str = "stored_events") -> AuditStore:
        register_adapters()
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        # Every connection writing the file copies its write-ahead log back every 40 MB
        # (`ledger.sqliterecorder`); one left at SQLite's 4 MB would do it at each sealing.
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        return cls(conn, "sqlite", events_table, 0)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def _create(self) -> None:
        with self.writer():
            for statement in _SCHEMA[self.dialect]:
                self.execute(statement)

    # -- transactions -----------------------------------------------------------------

    def _begin(self, statement: str) -> None:
        """BEGIN, on a new connection if the server closed this one since the last
        transaction (found before, or by, the BEGIN: nothing was done on it yet)."""
        self.reconnecting(lambda: self.conn.execute(statement))

    @contextmanager
    def writer(self) -> Iterator[AuditStore]:
        """An exclusive write transaction: one sealer at a time across every process."""
        with self._lock:
            if self._in_tx:
                yield self
                return
            self._begin("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            self._in_tx = True
            try:
                if self.dialect == "postgres":
                    self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
                yield self
            except BaseException:
                self.rollback_if_open()
                raise
            else:
                self.conn.execute("COMMIT")
            finally:
                self._in_tx = False

    @contextmanager
    def reader(self) -> Iterator[AuditStore]:
        """A read transaction that sees one state of events and log, however long it runs."""
        with self._lock:
            if self._in_tx:
                yield self
                return
            if self.dialect == "sqlite":
                self._begin("BEGIN")
            else:
                self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            self._in_tx = True
            try:
                yield self
            finally:
                self._in_tx = False
                self.rollback_if_open()

    # -- SQL --------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgres" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        # PostgreSQL results in binary: bytea arrives as bytes, not hex text to decode.
        cur = self.conn.cursor(binary=True) if self.dialect == "postgres" else self.conn.cursor()
        try:
            cur.execute(self._sql(sql), tuple(params))
            if cur.description is None:
                return []
            rows: list[tuple[Any, ...]] = cur.fetchall()  # tuples on both drivers
            return rows
        finally:
            cur.close()

    # -- the tree ---------------------------------------------------------------------

    def tree_state(self) -> tuple[int, int]:
        """(number of leaves, notification id of the last leaf or 0)."""
        rows = self.execute(
            "SELECT idx, notification_id FROM audit_tree WHERE level = 0 ORDER BY idx DESC LIMIT 1"
        )
        if not rows:
            return 0, 0
        return int(rows[0][0]) + 1, int(rows[0][1])

    def get(self, level: int, index: int) -> bytes:
        """One complete subtree hash (the `SubtreeHashes` protocol of `merkle`)."""
        return derive(level, index, self._get_stored)

    def _get_stored(self, level: int, index: int) -> bytes:
        rows = self.execute(
            "SELECT hash FROM audit_tree WHERE level = ? AND idx = ?", (level, index)
        )
        if not rows:
            raise AuditError(f"the stored tree has no node at level {level} index {index}")
        return bytes(rows[0][0])

    def get_many(self, wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Several nodes in one query (a proof's O(log n) nodes cost one round trip)."""
        coords = sorted(set(wanted))
        found: dict[tuple[int, int], bytes] = {}
        for start in range(0, len(coords), 200):
            chunk = coords[start : start + 200]
            where = " OR ".join("(level = ? AND idx = ?)" for _ in chunk)
            params = [value for coord in chunk for value in coord]
            for level, idx, digest in self.execute(
                f"SELECT level, idx, hash FROM audit_tree WHERE {where}", params
            ):
                found[(int(level), int(idx))] = bytes(digest)
        return found

    def insert_nodes(self, rows: Sequence[tuple[int, int, bytes, int | None]]) -> None:
        """Insert (level, index, hash, notification id) rows inside a writer transaction.

        Nodes of derived levels are skipped (see `DERIVED_LEVELS`).
        """
        if any(row[0] in DERIVED_LEVELS for row in rows):
            rows = [row for row in rows if row[0] not in DERIVED_LEVELS]
        if not rows:
            return
        if self.dialect == "sqlite":
            self.conn.executemany("INSERT INTO audit_tree VALUES (?, ?, ?, ?)", rows)
            return
        statement = "COPY audit_tree (level, idx, hash, notification_id) FROM STDIN (FORMAT BINARY)"
        with self.conn.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types(["int2", "int8", "bytea", "int8"])
            for row in rows:
                copy.write_row(row)

    def iter_level(self, level: int, start: int = 0) -> Iterator[tuple[int, bytes, int | None]]:
        """(index, hash, notification id) of one level, in index order, page by page."""
        position = start
        while True:
            rows = self.execute(
                "SELECT idx, hash, notification_id FROM audit_tree WHERE level = ? AND idx >= ? "
                "ORDER BY idx LIMIT ?",
                (level, position, PAGE),
            )
            yield from rows  # (int, bytes, int | None) on both drivers
            if len(rows) < PAGE:
                return
            position = int(rows[-1][0]) + 1

    def levels(self) -> list[int]:
        return [int(r[0]) for r in self.execute("SELECT DISTINCT level FROM audit_tree")]

    def leaf_indices(self, notification_ids: Sequence[int]) -> dict[int, int]:
        """Leaf index of each sealed notification id (unsealed ones are absent)."""
        found: dict[int, int] = {}
        for start in range(0, len(notification_ids), 400):
            chunk = list(notification_ids[start : start + 400])
            marks = ", ".join("?" for _ in chunk)
            for idx, nid in self.execute(
                "SELECT idx, notification_id FROM audit_tree "
                f"WHERE notification_id IN ({marks}) AND level = 0",
                chunk,
            ):
                found[int(nid)] = int(idx)
        return found

    def leaf_notification(self, index: int) -> int | None:
        rows = self.execute(
            "SELECT notification_id FROM audit_tree WHERE level = 0 AND idx = ?", (index,)
        )
        return int(rows[0][0]) if rows else None

    # -- events -----------------------------------------------------------------------

    def _event_select(self) -> str:
        if self.dialect == "sqlite":
            return (
                "SELECT rowid, originator_id, originator_version, topic, state "
                f"FROM {self.events_table} WHERE rowid > ? ORDER BY rowid LIMIT ?"
            )
        # The id as text: building a UUID object per row costs more than the row itself.
        return (
            "SELECT notification_id, originator_id::text, originator_version, topic, state "
            f"FROM {self.events_table} WHERE notification_id > ? ORDER BY notification_id LIMIT ?"
        )

    def event_tuples_after(
        self, notification_id: int, limit: int
    ) -> list[tuple[int, UUID | str, int, str, bytes]]:
        """Like `events_after`, as plain tuples (the sealer's hot loop)."""
        return self.execute(self._event_select(), (notification_id, limit))  # type: ignore[return-value]

    def events_after(self, notification_id: int, limit: int) -> list[EventRow]:
        """Both drivers already give int, str or UUID, int, str, bytes: no conversion."""
        rows = self.execute(self._event_select(), (notification_id, limit))
        return list(map(EventRow._make, rows))

    def iter_events(self, after: int = 0, page: int = PAGE) -> Iterator[EventRow]:
        position = after
        while True:
            rows = self.events_after(position, page)
            yield from rows
            if len(rows) < page:
                return
            position = rows[-1].notification_id

    def max_notification_id(self) -> int:
        column = "rowid" if self.dialect == "sqlite" else "notification_id"
        rows = self.execute(f"SELECT MAX({column}) FROM {self.events_table}")
        return int(rows[0][0] or 0)

    def subject_events(self, subject: UUID) -> list[tuple[int, int, str]]:
        """(notification id, version, topic) of every event of one originator, by version."""
        column = "rowid" if self.dialect == "sqlite" else "notification_id"
        key: Any = subject.hex if self.dialect == "sqlite" else subject
        return [
            (int(n), int(v), str(t))
            for n, v, t in self.execute(
                f"SELECT {column}, originator_version, topic FROM {self.events_table} "
                "WHERE originator_id = ? ORDER BY originator_version",
                (key,),
            )
        ]

    def events_by_id(self, notification_ids: Sequence[int]) -> dict[int, EventRow]:
        """Several events by notification id, a few hundred per query."""
        column = "rowid" if self.dialect == "sqlite" else "notification_id"
        oid = "originator_id" if self.dialect == "sqlite" else "originator_id::text"
        found: dict[int, EventRow] = {}
        for start in range(0, len(notification_ids), 400):
            chunk = list(notification_ids[start : start + 400])
            marks = ", ".join("?" for _ in chunk)
            for row in self.execute(
                f"SELECT {column}, {oid}, originator_version, topic, state "
                f"FROM {self.events_table} WHERE {column} IN ({marks})",
                chunk,
            ):
                found[int(row[0])] = EventRow._make(row)
        return found

    def event(self, notification_id: int) -> EventRow | None:
        rows = self.events_after(notification_id - 1, 1)
        return rows[0] if rows and rows[0].notification_id == notification_id else None

    # -- checkpoints ------------------------------------------------------------------

    def checkpoints(self) -> list[StoredCheckpoint]:
        return [
            StoredCheckpoint(int(s), bytes(r), str(n), str(c))
            for s, r, n, c in self.execute(
                "SELECT tree_size, root, note, created_at FROM audit_checkpoints ORDER BY tree_size"
            )
        ]

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        rows = self.execute(
            "SELECT tree_size, root, note, created_at FROM audit_checkpoints "
            "ORDER BY tree_size DESC LIMIT 1"
        )
        if not rows:
            return None
        s, r, n, c = rows[0]
        return StoredCheckpoint(int(s), bytes(r), str(n), str(c))

    def checkpoint_at(self, size: int) -> StoredCheckpoint | None:
        rows = self.execute(
            "SELECT tree_size, root, note, created_at FROM audit_checkpoints WHERE tree_size = ?",
            (size,),
        )
        if not rows:
            return None
        s, r, n, c = rows[0]
        return StoredCheckpoint(int(s), bytes(r), str(n), str(c))

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        if len(checkpoint.root) != HASH_SIZE:
            raise AuditError("a checkpoint root must be 32 bytes")
        self.execute(
            "INSERT INTO audit_checkpoints (tree_size, root, note, created_at) VALUES (?, ?, ?, ?)",
            (checkpoint.tree_size, checkpoint.root, checkpoint.note, checkpoint.created_at),
        )

    # -- meta -------------------------------------------------------------------------

    def meta(self, name: str) -> str | None:
        rows = self.execute("SELECT value FROM audit_meta WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, name: str, value: str) -> None:
        self.execute(
            "INSERT INTO audit_meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )
