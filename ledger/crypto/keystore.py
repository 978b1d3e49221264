"""The key store (DESIGN 4.3): per-subject, per-scope data keys, wrapped under a master key.

Keys live apart from the events: a SQLite file of their own by default, a PostgreSQL table
when the ledger runs on PostgreSQL. Nothing is cached across calls, so once `shred` has
returned no process can open that scope again. The keyed-hash lookup index lives here too,
beside the keys, so shredding `customer_data` and dropping the subject's index rows is one
transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.canonical import canonical_json
from ledger.config import DatabaseURL
from ledger.reconnect import Reconnecting, is_closed
from ledger.sqlitetypes import register_adapters

CUSTOMER_DATA = "customer_data"
_MASTER_CHECK = b"ledger/v1/master-check"
LOOKUP_KEY = "lookup-key"  # ledger_secrets: the HMAC key of the lookup index
# A key's id: 24 hex digits, the time it was made (milliseconds, 6 bytes) then 6 random
# bytes. In order of making, the kid index of the key store grows at its end: with
# random ids (8 bytes, before) each new key changed another page of that index, and a
# batch of new customers' key commits wrote and checkpointed ~290 pages more (SQLite, at
# 17k customers: 20.5 instead of 25.8 ms a batch for its keys and index rows).
KID_TIME_BYTES = 6
KID_RANDOM_BYTES = 6
KEY_BYTES = 32  # AES-256
WRAP_NONCE_BYTES = 12  # AES-GCM's nonce, for wrapping a key under the master key
_T = TypeVar("_T")
# A new key as stored: subject, scope, generation, kid, the key wrapped under the master key
KeyRow = tuple[str, str, int, str, bytes]


def _master_check(master_key: bytes) -> bytes:
    """What `ledger_secrets` keeps to tell the master key it was made with."""
    return hmac.new(master_key, _MASTER_CHECK, hashlib.sha256).digest()


# Columns written by `insert_many`, with their PostgreSQL types (binary COPY needs them).
_KEY_COLUMNS = (
    ("subject", "text"),
    ("scope", "text"),
    ("generation", "int4"),
    ("kid", "text"),
    ("wrapped", "bytea"),
    ("created_at", "text"),
)
_LOOKUP_COLUMNS = (("kind", "text"), ("digest", "bytea"), ("subject", "text"))

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ledger_keys (
        subject TEXT NOT NULL,
        scope TEXT NOT NULL,
        generation INTEGER NOT NULL,
        kid TEXT NOT NULL UNIQUE,
        wrapped BYTEA,
        created_at TEXT NOT NULL,
        shredded_at TEXT,
        PRIMARY KEY (subject, scope, generation))""",
    """CREATE TABLE IF NOT EXISTS ledger_lookup (
        kind TEXT NOT NULL,
        digest BYTEA NOT NULL,
        subject TEXT NOT NULL,
        PRIMARY KEY (kind, digest, subject))""",
    "CREATE INDEX IF NOT EXISTS ledger_lookup_subject ON ledger_lookup (subject)",
    """CREATE TABLE IF NOT EXISTS ledger_secrets (
        name TEXT PRIMARY KEY,
        value BYTEA NOT NULL)""",
)


class KeyStoreError(Exception):
    """The key store cannot be used (wrong master key, damaged row)."""


class KeyConflict(Exception):
    """Another writer created the same key generation first: retry the unit of work."""


@dataclass(frozen=True)
class DataKey:
    subject: str
    scope: str
    generation: int
    kid: str
    key: bytes

    @cached_property
    def cipher(self) -> AESGCM:
        """The key set up for sealing, once per key rather than once per value."""
        return AESGCM(self.key)


@dataclass(frozen=True)
class KeyRecord:
    """A key's bookkeeping without the key: what reconciler and reports need."""

    subject: str
    scope: str
    generation: int
    kid: str
    shredded_at: str | None


class _Database:
    """The few SQL operations the store needs, on SQLite or PostgreSQL.

    Both connections run in autocommit mode: reads cost one statement, and the first
    write opens a transaction explicitly (`begin_statement`) until `commit`/`rollback`.
    Every use of the connection goes through `_call`, where PostgreSQL replaces a
    connection the server closed (see `_Postgres`).
    """

    begin_statement = "BEGIN"
    conn: Any

    def __init__(self) -> None:
        self._in_tx = False

    def _call(self, statement: Callable[[], _T]) -> _T:
        return statement()

    def _begin(self) -> None:
        if not self._in_tx:
            self._call(lambda: self.conn.execute(self.begin_statement))
            self._in_tx = True

    def begin(self) -> None:
        """A write transaction (for reads that must see what it will write on)."""
        self._begin()

    def live_subjects(self, scope: str, subjects: Sequence[str]) -> set[str]:
        """Which of `subjects` have a live key of `scope`, inside the current write
        transaction, so that no shredding of those keys can commit before it does (SQLite:
        BEGIN IMMEDIATE admits one writer; PostgreSQL locks the key rows, `_Postgres`)."""
        found: set[str] = set()
        for start in range(0, len(subjects), 500):
            chunk = subjects[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = self.execute(
                "SELECT subject FROM ledger_keys WHERE scope = ? AND wrapped IS NOT NULL "
                f"AND subject IN ({marks})",
                (scope, *chunk),
            )
            found.update(r[0] for r in rows)
        return found

    def lock_keys_for_shredding(self, kids: Sequence[str]) -> None:
        """In a write transaction, take the rows of these keys before shredding them:
        SQLite's BEGIN IMMEDIATE already admits no other writer; PostgreSQL locks them."""
        self._begin()

    def begin_exclusive(self, *tables: str) -> None:
        """A write transaction in which `tables` change under no other writer (their reads
        included): SQLite's BEGIN IMMEDIATE already is; PostgreSQL locks the tables."""
        self._begin()

    def begin_writing(self, table: str) -> None:
        """A write transaction that waits for a `begin_exclusive` holding `table` to end,
        and keeps one from starting until it ends: SQLite's BEGIN IMMEDIATE already does;
        PostgreSQL takes the table lock an INSERT would, before the first statement."""
        self._begin()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if not sql.startswith("SELECT"):
            self._begin()  # reads outside a write transaction take no lock
        return self._call(lambda: self._run(sql, params))

    def _run(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def insert_many(
        self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Any]
    ) -> None:
        """Insert new rows (no conflict handling) in the current write transaction.

        `columns` are (name, PostgreSQL type) pairs; the types serve binary COPY."""
        names = ", ".join(name for name, _ in columns)
        marks = ", ".join("?" for _ in columns)
        self.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)

    def commit(self) -> None:
        if self._in_tx:
            self._call(lambda: self.conn.execute("COMMIT"))
            self._in_tx = False

    def rollback(self) -> None:
        if self._in_tx:
            self.conn.execute("ROLLBACK")
            self._in_tx = False

    def compact(self) -> None:
        """Make deleted key bytes unrecoverable from the database files."""
        raise NotImplementedError

    def close(self) -> None:
        self.rollback()
        self.conn.close()


WAL_CHECKPOINT_PAGES = 1_000


class _SQLite(_Database):
    begin_statement = "BEGIN IMMEDIATE"

    def __init__(self, path: Path) -> None:
        super().__init__()
        register_adapters()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA secure_delete=ON")
        # The WAL is copied back at SQLite's default, every 1,000 pages, not every 10,000
        # as for ledger.db (`ledger.sqliterecorder`): every erasure empties it at once
        # (`compact`), and an erasure after nine batches of new customers then had up to
        # 40 MB to copy: 13-14 ms instead of 5 (the goal is under 10 ms). Appends pay
        # for it: at 300k events the key store's commits take 22 ms a 1,000-command
        # batch, 12.5 ms at 10,000 pages.
        self.conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        self.conn.execute(f"PRAGMA busy_timeout={self.BUSY_MS}")
        os.chmod(path, 0o600)
        # A process killed after a shred committed and before `compact` left the key's old
        # page in keys.db (the new one waits in the WAL), and nothing destroyed later would
        # compact: copy the WAL in now. Opening waits at most a second for other
        # connections; if they are busy, later commits try again (`truncate_owed`).
        self._truncate(wait_ms=1000)

    def _run(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self.conn.execute(sql, tuple(params)).fetchall()
        return rows

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._begin()
        self.conn.executemany(sql, rows)

    BUSY_MS = 30000  # how long a statement waits for another connection's lock
    truncate_owed = False  # a checkpoint met a reader: the WAL may still hold old bytes

    def compact(self) -> None:
        self.commit()
        self._truncate(wait_ms=self.BUSY_MS)

    def commit(self) -> None:
        super().commit()
        if self.truncate_owed:  # until a reader that held an old snapshot has gone
            self._truncate(wait_ms=100)  # briefly: a commit is not held up by a reader

    def _truncate(self, *, wait_ms: int) -> None:
        """Copy the WAL into the database and empty it (where a destroyed key's bytes
        would otherwise stay); a reader holding an old snapshot makes that wait, at most
        `wait_ms`, and the next commit tries again."""
        self.conn.execute(f"PRAGMA busy_timeout={wait_ms}")
        try:
            busy = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            self.conn.execute(f"PRAGMA busy_timeout={self.BUSY_MS}")
        self.truncate_owed = bool(busy)


class _Postgres(_Database, Reconnecting):
    """One psycopg connection, replaced when the server has closed it (`Reconnecting`).

    Outside a transaction a statement is a read, a BEGIN or a VACUUM, safe to send again.
    Inside a transaction a lost connection fails the unit of work (its transaction went
    with the connection); `rollback` then has nothing to undo, and the next statement
    reconnects.
    """

    def __init__(self, url: DatabaseURL) -> None:
        super().__init__()
        self.url = url
        self.connect = self._connect
        self.conn = self._connect()
        if url.schema:
            self.conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{url.schema}"')

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.url.conninfo(), autocommit=True)
        if self.url.schema:
            conn.execute(f'SET search_path TO "{self.url.schema}"')
        return conn

    def _call(self, statement: Callable[[], _T]) -> _T:
        if self._in_tx:
            try:
                return statement()
            except Exception:
                if is_closed(self.conn):  # the transaction ended with the connection
                    self._in_tx = False
                raise
        return self.reconnecting(statement)

    def rollback(self) -> None:
        if self._in_tx:
            self._in_tx = False
            self.rollback_if_open()

    def _run(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), tuple(params))
            return cur.fetchall() if cur.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._begin()

        def run() -> None:
            with self.conn.cursor() as cur:
                cur.executemany(sql.replace("?", "%s"), rows)

        self._call(run)

    def insert_many(
        self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Any]
    ) -> None:
        """By binary COPY: `executemany` sends a bind and an execute per row; for a batch
        of new customers its keys and lookups took a seventh of the client's CPU, now a
        fortieth. (It said binary but sent text, every byte of a wrapped key or digest
        spelt in hex for the server to parse: binary saves ~0.5 ms a batch.)"""
        if not rows:
            return
        self._begin()
        names = ", ".join(name for name, _ in columns)

        def run() -> None:
            statement = f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)"
            with self.conn.cursor() as cur, cur.copy(statement) as copy:
                copy.set_types([kind for _, kind in columns])
                for row in rows:
                    copy.write_row(row)

        self._call(run)

    def begin_exclusive(self, *tables: str) -> None:
        self._begin()
        locked = ", ".join(tables)
        self._call(lambda: self.conn.execute(f"LOCK TABLE {locked} IN EXCLUSIVE MODE"))

    def begin_writing(self, table: str) -> None:
        self._begin()
        self._call(lambda: self.conn.execute(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE"))

    def live_subjects(self, scope: str, subjects: Sequence[str]) -> set[str]:
        """`FOR SHARE` locks the live key rows: a shredding (an UPDATE of such a row) that
        has not committed is waited for, and its result read (the row no longer matches);
        one that comes later waits for this transaction. One statement, rows locked in kid
        order, the order a shredding locks them in too (`lock_keys_for_shredding`): two
        transactions that take some of the same rows in one order cannot deadlock."""
        self._begin()
        rows = self._call(
            lambda: self._run(
                "SELECT subject FROM ledger_keys WHERE scope = ? AND wrapped IS NOT NULL "
                "AND subject = ANY(?) ORDER BY kid FOR SHARE",
                (scope, list(subjects)),
            )
        )
        return {r[0] for r in rows}

    def lock_keys_for_shredding(self, kids: Sequence[str]) -> None:
        """`FOR UPDATE` in kid order. The UPDATE alone locks rows in the order its plan
        reads them (a bitmap scan: the table's physical order), so a shredding of many
        keys and an index write's `live_subjects` took the same rows in different orders
        and deadlocked, one time in four for 300 subjects; the server then failed one."""
        self._begin()
        self._call(
            lambda: self._run(
                "SELECT kid FROM ledger_keys WHERE kid = ANY(?) ORDER BY kid FOR UPDATE",
                (list(kids),),
            )
        )

    def compact(self) -> None:
        self.commit()
        self._call(lambda: self.conn.execute("VACUUM ledger_keys, ledger_lookup"))


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _is_unique_violation(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.IntegrityError):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, psycopg.errors.UniqueViolation)


RECEIPT_KEY = "receipt-key:"  # ledger_secrets: one HMAC key per ISO week of receipts


class KeySession:
    """The keys one unit of work needs.

    Lives only as long as the unit of work (no key outlives a command); the aggregate's
    optimistic concurrency protects against a concurrent shredding, because shredding is
    an event on the same subject.
    """

    def __init__(self, store: KeyStore, rows: Sequence[tuple[Any, ...]]) -> None:
        self._store = store
        self._top: dict[tuple[str, str], tuple[int, str, bytes | None]] = {}
        for subject, scope, generation, kid, wrapped in rows:
            current = self._top.get((subject, scope))
            if current is None or int(generation) > current[0]:
                self._top[(subject, scope)] = (
                    int(generation),
                    kid,
                    bytes(wrapped) if wrapped is not None else None,
                )
        self._open: dict[tuple[str, str], DataKey] = {}
        self.new_keys: list[tuple[DataKey, bytes]] = []

    def key_for_sealing(self, subject: str, scope: str) -> DataKey:
        """The scope's live key, or a new generation after the last (shredded) one."""
        found = self._open.get((subject, scope))
        if found is not None:
            return found
        top = self._top.get((subject, scope))
        if top is not None and top[2] is not None:
            generation, kid, wrapped = top[0], top[1], top[2]
            key = self._store._unwrap(wrapped, self._store._aad(subject, scope, kid))
            found = DataKey(subject, scope, generation, kid, key)
        else:
            found = self._new_key(subject, scope, top[0] + 1 if top else 1)
        self._open[(subject, scope)] = found
        return found

    def renew(self, subject: str, scope: str) -> DataKey:
        """A new generation for a scope whose current key this unit of work shreds.

        For a command that seals into a scope after an earlier command of the same unit of
        work erased it (an `erase`, then a bookkeeping `collect` into a scope the erase
        shreds): the next generation after the current key (the one open in this session,
        or else the newest in the store), a fresh kid and key, written with the other new
        keys at `commit`, and the open key of (subject, scope) from now on, so later seals
        use it. `rollback_to` forgets it like any new key.
        """
        generations = [0]
        found = self._open.get((subject, scope))
        if found is not None:
            generations.append(found.generation)
        top = self._top.get((subject, scope))
        if top is not None:
            generations.append(top[0])
        renewed = self._new_key(subject, scope, max(generations) + 1)
        self._open[(subject, scope)] = renewed
        return renewed

    def _new_key(self, subject: str, scope: str, generation: int) -> DataKey:
        """A fresh key of this generation, wrapped, to be written at `commit`."""
        made, wrapped = self._store._fresh_key(subject, scope, generation)
        self.new_keys.append((made, wrapped))
        return made

    def checkpoint(self) -> int:
        """How many new keys there are now, for `rollback_to` (a command of a group)."""
        return len(self.new_keys)

    def rollback_to(self, mark: int) -> None:
        """Forget the keys made since `checkpoint`: a rejected command writes no key.

        A scope whose open key goes opens again as it was at the mark: the newest new key
        made before it (a key `renew` replaced), or else the store's key (`key_for_sealing`).
        """
        gone = {(key.subject, key.scope) for key, _ in self.new_keys[mark:]}
        del self.new_keys[mark:]
        for scope_key in gone:
            self._open.pop(scope_key, None)
        for key, _ in self.new_keys:
            if (key.subject, key.scope) in gone:
                self._open[(key.subject, key.scope)] = key  # the newest one wins

    def rows(self) -> list[KeyRow]:
        """The new keys as the store keeps them: wrapped, never the key itself."""
        return [
            (key.subject, key.scope, key.generation, key.kid, wrapped)
            for key, wrapped in self.new_keys
        ]

    def commit(self) -> None:
        """Write the new keys in one transaction (before the events that use them)."""
        self._store.write_keys(self.rows())

    def forget(self) -> None:
        self._open.clear()
        self._top.clear()


class KeysWithEvents:
    """New keys, and the index rows of newly registered subjects, written in the same
    PostgreSQL transaction as the events that use them (`ledger.pgrecorder` sends them).

    Elsewhere the keys commit first in a transaction of their own and the index rows
    after the events, in a third: a crash between them left keys no event uses, or
    events whose subjects could not be found until `ledger keys reindex`. In one
    transaction neither can happen, and two commits and their round trips go (a tenth of
    a 1,000-command batch). The statements queue behind the event table's lock, in the
    pipeline that takes it: a key insert waits for a rewrap in progress (which locks
    `ledger_keys`), and the master-key check after it reads what that rewrap committed.

    A new subject's index rows need no check for a live `customer_data` key (its key is
    written here, or was read live by this unit of work, and no event names it for
    shredding yet); rows that replace a known subject's keep that check, after the
    events (`KeyStore.replace_lookups`).
    """

    def __init__(
        self,
        store: KeyStore,
        schema: str,
        keys: Sequence[KeyRow],
        fresh_lookups: Sequence[tuple[str, str, bytes]],
    ) -> None:
        from psycopg.sql import SQL, Identifier

        def table(name: str) -> Any:
            if not schema:  # the connection's search path finds it, as the store's does
                return Identifier(name)
            return SQL("{}.{}").format(Identifier(schema), Identifier(name))

        self._store = store
        self._keys = keys
        self._lookups = fresh_lookups
        self._insert_keys = SQL(
            "INSERT INTO {} (subject, scope, generation, kid, wrapped, created_at) "
            "SELECT s, sc, g, k, w, %b FROM unnest(%b::text[], %b::text[], %b::int4[], "
            "%b::text[], %b::bytea[]) AS t(s, sc, g, k, w)"
        ).format(table("ledger_keys"))
        # A row already there would be a crash's leftover from before rows were written
        # with their events: the same row, kept.
        self._insert_lookups = SQL(
            "INSERT INTO {} (kind, digest, subject) "
            "SELECT * FROM unnest(%b::text[], %b::bytea[], %b::text[]) ON CONFLICT DO NOTHING"
        ).format(table("ledger_lookup"))
        self._select_check = SQL("SELECT value FROM {} WHERE name = 'master-check'").format(
            table("ledger_secrets")
        )

    def __bool__(self) -> bool:
        return bool(self._keys or self._lookups)

    def send(self, conn: Any) -> Callable[[], None]:
        """Queue the inserts and the master-key check on `conn`, a connection in pipeline
        mode inside the event transaction; the check returned refuses (rolling it all
        back) once they have run, if the master key was rotated since this process began."""
        if self._keys:
            subjects, scopes, generations, kids, wrapped = zip(*self._keys, strict=True)
            with conn.cursor() as cur:
                cur.execute(
                    self._insert_keys,
                    (
                        _now(),
                        list(subjects),
                        list(scopes),
                        list(generations),
                        list(kids),
                        list(wrapped),
                    ),
                )
        if self._lookups:
            with conn.cursor() as cur:
                cur.execute(
                    self._insert_lookups,
                    (
                        [kind for _, kind, _ in self._lookups],
                        [digest for _, _, digest in self._lookups],
                        [subject for subject, _, _ in self._lookups],
                    ),
                )
        from psycopg.rows import tuple_row

        check = conn.cursor(row_factory=tuple_row)
        check.execute(self._select_check)

        def verify() -> None:
            with check:
                row = check.fetchone()
            self._store._refuse_if_rotated(None if row is None else bytes(row[0]))

        return verify


class KeyStore:
    """Per-subject scope keys, the lookup key and the lookup index."""

    def __init__(self, db: _Database, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise KeyStoreError("the master key must be 32 bytes")
        self._db = db
        self._master = AESGCM(master_key)
        self._master_key = master_key
        self._lock = threading.RLock()
        self._lookup_key: bytes | None = None
        with self._lock:
            try:
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._check_master()
                self._db.commit()
            except BaseException:
                self._db.close()  # a refused store must not keep its write lock
                raise

    @classmethod
    def open(cls, url: DatabaseURL, master_key: bytes) -> KeyStore:
        if url.backend == "sqlite":
            assert url.sqlite_path is not None
            return cls(_SQLite(url.sqlite_path), master_key)
        return cls(_Postgres(url), master_key)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _done(self) -> None:
        """End the implicit transaction of a single operation."""
        self._db.commit()

    def session(self, subjects: Iterable[str]) -> KeySession:
        """Keys for one unit of work: read in one query, new keys written in one go."""
        wanted = sorted(set(subjects))
        rows: list[tuple[Any, ...]] = []
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                rows.extend(
                    self._db.execute(
                        "SELECT subject, scope, generation, kid, wrapped FROM ledger_keys "
                        f"WHERE subject IN ({marks})",
                        chunk,
                    )
                )
        return KeySession(self, rows)

    def replace_lookups(
        self, rows: Sequence[tuple[str, str, bytes]], *, new_subjects: Collection[str] = ()
    ) -> None:
        """Each (subject, kind) gets this digest as its current identifier, in one transaction.

        Subjects registered in the same unit of work have no earlier rows to remove.

        Invariant: a subject has lookup rows only while it has a live `customer_data` key.
        Rows of a subject without one are not written (and any it had are removed): the
        check runs inside this write transaction, which a shredding cannot overtake (see
        `_Database.live_subjects`), so an erasure that lands between a unit of work's
        events and its index rows, or during `Ledger.reindex_lookups`, is never undone.
        An identifier kept only in another scope (a customer number collected for
        bookkeeping) is therefore not findable, as after an erasure.
        """
        fresh = [
            (kind, digest, subject) for subject, kind, digest in rows if subject in new_subjects
        ]
        with self._lock:
            try:
                try:
                    self._replace_lookups(rows, fresh, new_subjects)
                except Exception as exc:
                    if not (fresh and _is_unique_violation(exc)):
                        raise
                    # A row of a "new" subject is there already. It should not be (rows
                    # are written after the subject's first event is saved), but the
                    # events are saved now: write the rows the careful way rather than fail.
                    self._db.rollback()
                    self._replace_lookups(rows, [], ())
            except BaseException:
                self._db.rollback()
                raise

    def _replace_lookups(
        self,
        rows: Sequence[tuple[str, str, bytes]],
        fresh: Sequence[tuple[str, bytes, str]],
        new_subjects: Collection[str],
    ) -> None:
        """Delete and insert-or-ignore for known subjects; plain inserts of `fresh` rows."""
        self._db.begin()
        subjects = sorted({subject for subject, _, _ in rows})
        live = self._db.live_subjects(CUSTOMER_DATA, subjects)
        erased = len(live) < len(subjects)
        if erased:
            self._db.executemany(
                "DELETE FROM ledger_lookup WHERE subject = ?",
                [(subject,) for subject in subjects if subject not in live],
            )
            rows = [row for row in rows if row[0] in live]
            fresh = [row for row in fresh if row[2] in live]
        self._db.executemany(
            "DELETE FROM ledger_lookup WHERE subject = ? AND kind = ?",
            [(subject, kind) for subject, kind, _ in rows if subject not in new_subjects],
        )
        self._db.executemany(
            "INSERT INTO ledger_lookup (kind, digest, subject) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            [
                (kind, digest, subject)
                for subject, kind, digest in rows
                if subject not in new_subjects
            ],
        )
        self._db.insert_many("ledger_lookup", _LOOKUP_COLUMNS, fresh)
        self._db.commit()
        if erased:  # an erased subject's digests leave the files as after a shredding
            self._db.compact()

    def write_keys(self, rows: Sequence[KeyRow]) -> None:
        """New keys in one transaction of their own (before the events that use them)."""
        if not rows:
            return
        with self._lock:
            try:
                now = _now()
                self._db.insert_many("ledger_keys", _KEY_COLUMNS, [(*row, now) for row in rows])
                self._still_the_master()
                self._db.commit()
            except Exception as exc:
                self._db.rollback()
                if _is_unique_violation(exc):
                    raise KeyConflict("a key generation was created concurrently") from exc
                raise

    def writes_with_events(
        self, keys: Sequence[KeyRow], fresh_lookups: Sequence[tuple[str, str, bytes]]
    ) -> KeysWithEvents:
        """A unit of work's new keys and the index rows of the subjects it registers, to
        commit in the PostgreSQL transaction of its events (`KeysWithEvents`)."""
        if not isinstance(self._db, _Postgres):
            raise TypeError("only a PostgreSQL key store writes in the events' transaction")
        return KeysWithEvents(self, self._db.url.schema, keys, fresh_lookups)

    # -- master key -------------------------------------------------------------------

    def _still_the_master(self) -> None:
        """Inside a write that wraps new keys, after its first write (which waits for a
        rewrap in progress): refuse if the master key was rotated since this process
        opened the store, or the new keys would open under nothing anyone holds."""
        rows = self._db.execute(
            "SELECT value FROM ledger_secrets WHERE name = ?", ("master-check",)
        )
        self._refuse_if_rotated(bytes(rows[0][0]) if rows else None)

    def _refuse_if_rotated(self, stored_check: bytes | None) -> None:
        if stored_check is not None and not hmac.compare_digest(
            stored_check, _master_check(self._master_key)
        ):
            raise KeyStoreError(
                "the master key was rotated (ledger keys rewrap) since this process started: "
                "restart it with the new master key"
            )

    def _check_master(self) -> None:
        check = _master_check(self._master_key)
        rows = self._db.execute(
            "SELECT value FROM ledger_secrets WHERE name = ?", ("master-check",)
        )
        if not rows:
            self._db.execute(
                "INSERT INTO ledger_secrets (name, value) VALUES (?, ?)", ("master-check", check)
            )
        elif not hmac.compare_digest(bytes(rows[0][0]), check):
            raise KeyStoreError("the master key does not match this key store")

    def _fresh_key(self, subject: str, scope: str, generation: int) -> tuple[DataKey, bytes]:
        """A new data key of this generation, and its wrapped form to store.

        One call to the system's randomness gives the random part of its id, the key and
        the wrapping nonce (a system call each before; a registration makes two keys).
        """
        fresh = os.urandom(KID_RANDOM_BYTES + KEY_BYTES + WRAP_NONCE_BYTES)
        made = (time.time_ns() // 1_000_000).to_bytes(KID_TIME_BYTES, "big")
        kid = made.hex() + fresh[:KID_RANDOM_BYTES].hex()
        key = fresh[KID_RANDOM_BYTES : KID_RANDOM_BYTES + KEY_BYTES]
        nonce = fresh[KID_RANDOM_BYTES + KEY_BYTES :]
        wrapped = self._wrap(key, self._aad(subject, scope, kid), nonce)
        return DataKey(subject, scope, generation, kid, key), wrapped

    def _wrap(self, key: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
        """A key sealed under the master key, its nonce first (a fresh one unless given)."""
        nonce = os.urandom(WRAP_NONCE_BYTES) if nonce is None else nonce
        return nonce + self._master.encrypt(nonce, key, aad)

    def _unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        try:
            return self._master.decrypt(wrapped[:12], wrapped[12:], aad)
        except InvalidTag as exc:
            raise KeyStoreError("a wrapped key does not open under the master key") from exc

    @staticmethod
    def _aad(subject: str, scope: str, kid: str) -> bytes:
        return canonical_json(["ledger/v1/wrap", subject, scope, kid])

    # -- data keys --------------------------------------------------------------------

    def active_key(self, subject: str, scope: str) -> DataKey | None:
        """The scope's live generation, if any (never a shredded one)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT generation, kid, wrapped FROM ledger_keys "
                "WHERE subject = ? AND scope = ? AND wrapped IS NOT NULL "
                "ORDER BY generation DESC LIMIT 1",
                (subject, scope),
            )
            self._done()
        if not rows:
            return None
        generation, kid, wrapped = rows[0]
        key = self._unwrap(bytes(wrapped), self._aad(subject, scope, kid))
        return DataKey(subject, scope, int(generation), kid, key)

    def ensure_key(self, subject: str, scope: str) -> DataKey:
        """The live key of a scope, or a new generation after the last (shredded) one."""
        with self._lock:
            existing = self.active_key(subject, scope)
            if existing is not None:
                return existing
            rows = self._db.execute(
                "SELECT COALESCE(MAX(generation), 0) FROM ledger_keys "
                "WHERE subject = ? AND scope = ?",
                (subject, scope),
            )
            made, wrapped = self._fresh_key(subject, scope, int(rows[0][0]) + 1)
            try:
                self._db.execute(
                    "INSERT INTO ledger_keys (subject, scope, generation, kid, wrapped, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (subject, scope, made.generation, made.kid, wrapped, _now()),
                )
                self._still_the_master()
            except BaseException:
                self._db.rollback()
                raise
            self._done()
            created = self.active_key(subject, scope)
            if created is None:  # pragma: no cover - lost a race and the winner was shredded
                raise KeyStoreError("could not create a key for this scope")
            return created

    def key(self, subject: str, scope: str, kid: str) -> bytes | None:
        """The key with this id, or None once it is shredded (or never existed)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT wrapped FROM ledger_keys WHERE subject = ? AND scope = ? AND kid = ?",
                (subject, scope, kid),
            )
            self._done()
        if not rows or rows[0][0] is None:
            return None
        return self._unwrap(bytes(rows[0][0]), self._aad(subject, scope, kid))

    def keys(self, subject: str) -> dict[str, bytes]:
        """Every live key of a subject by kid (for reading many values at once)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT scope, kid, wrapped FROM ledger_keys "
                "WHERE subject = ? AND wrapped IS NOT NULL",
                (subject,),
            )
            self._done()
        return {
            kid: self._unwrap(bytes(wrapped), self._aad(subject, scope, kid))
            for scope, kid, wrapped in rows
        }

    def records(self, subject: str | None = None) -> list[KeyRecord]:
        with self._lock:
            if subject is None:
                rows = self._db.execute(
                    "SELECT subject, scope, generation, kid, shredded_at FROM ledger_keys"
                )
            else:
                rows = self._db.execute(
                    "SELECT subject, scope, generation, kid, shredded_at FROM ledger_keys "
                    "WHERE subject = ?",
                    (subject,),
                )
            self._done()
        return [KeyRecord(r[0], r[1], int(r[2]), r[3], r[4]) for r in rows]

    def shred(self, subject: str, scope: str, kids: Sequence[str]) -> list[str]:
        """Destroy these keys of a scope; returns the kids actually destroyed now.

        The row stays as a tombstone (no key bytes) so the generation is never reused.
        Destroying a `customer_data` key drops the subject's lookup index rows in the same
        transaction. Idempotent: a key already destroyed is skipped.
        """
        return self.shred_many([(subject, scope, kids)])

    def shred_many(
        self, items: Sequence[tuple[str, str, Sequence[str]]], *, compact: bool = True
    ) -> list[str]:
        """Destroy keys in one transaction, set-wise; `compact=False` leaves compaction to
        the caller (a sweep compacts once at its end)."""
        wanted = {kid: (subject, scope) for subject, scope, kids in items for kid in kids}
        destroyed: list[str] = []
        with self._lock:
            try:
                now = _now()
                kids = sorted(wanted)
                if kids:
                    self._db.lock_keys_for_shredding(kids)
                for start in range(0, len(kids), 500):
                    chunk = kids[start : start + 500]
                    marks = ", ".join("?" for _ in chunk)
                    rows = self._db.execute(
                        f"UPDATE ledger_keys SET wrapped = NULL, shredded_at = ? "
                        f"WHERE kid IN ({marks}) AND wrapped IS NOT NULL RETURNING kid",
                        (now, *chunk),
                    )
                    destroyed.extend(r[0] for r in rows)
                erased = sorted(
                    {wanted[kid][0] for kid in destroyed if wanted[kid][1] == CUSTOMER_DATA}
                )
                for start in range(0, len(erased), 500):
                    chunk = erased[start : start + 500]
                    marks = ", ".join("?" for _ in chunk)
                    self._db.execute(f"DELETE FROM ledger_lookup WHERE subject IN ({marks})", chunk)
                self._db.commit()
                if destroyed and compact:
                    self._db.compact()
            except BaseException:
                self._db.rollback()
                raise
        return destroyed

    def live_kids(self) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT kid FROM ledger_keys WHERE wrapped IS NOT NULL")
            self._done()
        return {r[0] for r in rows}

    def secret(self, name: str) -> bytes | None:
        """A small named value kept beside the keys (positions, the lookup key)."""
        with self._lock:
            rows = self._db.execute("SELECT value FROM ledger_secrets WHERE name = ?", (name,))
            self._done()
        return bytes(rows[0][0]) if rows else None

    def set_secret(self, name: str, value: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO ledger_secrets (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
            self._done()

    def compact(self) -> None:
        with self._lock:
            self._db.compact()

    # -- receipt keys -----------------------------------------------------------------

    def receipt_key(self, period: str, *, create: bool = True) -> bytes | None:
        """The HMAC key of the idempotency receipts made in `period` (an ISO week).

        A receipt hashes its whole command, personal values included, so whoever holds its
        key could confirm a guessed value. A period's key is destroyed once its receipts
        are no longer honoured (`drop_receipt_keys`, run by the sweeper), erased subjects'
        included. None if it is gone (or, with `create=False`, was never made).
        """
        return self._secret_key(RECEIPT_KEY + period, create=create)

    def _secret_key(self, name: str, *, create: bool) -> bytes | None:
        """A 32-byte key kept wrapped in `ledger_secrets` under `name`, made on first use
        (unless `create` is False: None if there is none)."""
        aad = self._secret_aad(name)
        with self._lock:
            rows = self._db.execute("SELECT value FROM ledger_secrets WHERE name = ?", (name,))
            if not rows and create:
                try:
                    # The lock first (it waits for a rewrap in progress, and keeps one from
                    # starting), then the master key it will be wrapped under.
                    self._db.begin_writing("ledger_secrets")
                    self._still_the_master()
                    self._db.execute(
                        "INSERT INTO ledger_secrets (name, value) VALUES (?, ?) "
                        "ON CONFLICT DO NOTHING",
                        (name, self._wrap(os.urandom(32), aad)),
                    )
                    rows = self._db.execute(
                        "SELECT value FROM ledger_secrets WHERE name = ?", (name,)
                    )
                except BaseException:
                    self._db.rollback()
                    raise
            self._done()
        return self._unwrap(bytes(rows[0][0]), aad) if rows else None

    @classmethod
    def _secret_aad(cls, name: str) -> bytes:
        """What a wrapped secret is bound to: the lookup key, or a receipt key's week."""
        if name.startswith(RECEIPT_KEY):
            return cls._aad("*", "receipt", name[len(RECEIPT_KEY) :])
        return cls._aad("*", "lookup", name)

    def drop_receipt_keys(self, before: str) -> int:
        """Destroy the receipt keys of every period before `before`; how many went."""
        bounds = (RECEIPT_KEY, RECEIPT_KEY + before)
        with self._lock:
            try:
                gone = self._db.execute(
                    "SELECT name FROM ledger_secrets WHERE name >= ? AND name < ?", bounds
                )
                if gone:
                    self._db.execute(
                        "DELETE FROM ledger_secrets WHERE name >= ? AND name < ?", bounds
                    )
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
            if gone:
                self._db.compact()
        return len(gone)

    def rewrap(
        self, new_master_key: bytes, *, before_commit: Callable[[], None] | None = None
    ) -> int:
        """Re-encrypt every live key (and the lookup and receipt keys) under a new master key.

        One transaction that no other writer of keys or secrets can enter (their reads go
        on; on PostgreSQL both tables are locked), so a key or secret shredded or made
        meanwhile is neither brought back nor left under the old master key.
        `before_commit` runs last inside it: the place to keep the new master key safe,
        since once this commits nothing opens without it. Processes still holding the old
        master key refuse to write keys or secrets from then on (`_still_the_master`).
        """
        if len(new_master_key) != 32:
            raise KeyStoreError("the master key must be 32 bytes")
        new = AESGCM(new_master_key)
        count = 0
        with self._lock:
            try:
                self._db.begin_exclusive("ledger_keys", "ledger_secrets")
                rows = self._db.execute(
                    "SELECT subject, scope, kid, wrapped FROM ledger_keys WHERE wrapped IS NOT NULL"
                )
                for subject, scope, kid, wrapped in rows:
                    aad = self._aad(subject, scope, kid)
                    key = self._unwrap(bytes(wrapped), aad)
                    nonce = os.urandom(12)
                    self._db.execute(
                        "UPDATE ledger_keys SET wrapped = ? WHERE kid = ? AND wrapped IS NOT NULL",
                        (nonce + new.encrypt(nonce, key, aad), kid),
                    )
                    count += 1
                secrets = self._db.execute(
                    "SELECT name, value FROM ledger_secrets WHERE name = ? OR "
                    "(name >= ? AND name < ?)",
                    (LOOKUP_KEY, RECEIPT_KEY, RECEIPT_KEY + "\uffff"),
                )
                for name, value in secrets:
                    aad = self._secret_aad(name)
                    key = self._unwrap(bytes(value), aad)
                    nonce = os.urandom(12)
                    self._db.execute(
                        "UPDATE ledger_secrets SET value = ? WHERE name = ?",
                        (nonce + new.encrypt(nonce, key, aad), name),
                    )
                self._db.execute(
                    "UPDATE ledger_secrets SET value = ? WHERE name = ?",
                    (_master_check(new_master_key), "master-check"),
                )
                if before_commit is not None:
                    before_commit()
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
            self._master = new
            self._master_key = new_master_key
            self._db.compact()
        return count

    # -- lookup index -----------------------------------------------------------------

    def lookup_key(self) -> bytes:
        """The HMAC key of the lookup index, created on first use.

        Kept in memory once read: it is never shredded (only index rows are), so a cached
        copy cannot outlive an erasure.
        """
        if self._lookup_key is None:
            self._lookup_key = self._secret_key(LOOKUP_KEY, create=True)
        assert self._lookup_key is not None
        return self._lookup_key

    def find(self, kind: str, digest: bytes) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT subject FROM ledger_lookup WHERE kind = ? AND digest = ? ORDER BY subject",
                (kind, digest),
            )
            self._done()
        return [r[0] for r in rows]

    def remove_lookups(self, subject: str) -> None:
        """Drop an erased subject's index rows, and their bytes from the files."""
        with self._lock:
            removed = self._db.execute(
                "DELETE FROM ledger_lookup WHERE subject = ? RETURNING subject", (subject,)
            )
            self._done()
            if removed:
                self._db.compact()
