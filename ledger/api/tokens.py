"""Bearer tokens of the HTTP service (DESIGN 5.4): stored only as SHA-256 hashes.

The table lives in the event store's database (the SQLite file, or the PostgreSQL
schema), so every server process of one ledger sees the same tokens and a revocation
reaches all of them. A token is shown once, when created; the ledger keeps its hash,
its role and its name (the actor recorded in every event the token writes).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from ledger.config import DatabaseURL, Settings
from ledger.domain.screening import personal_data_in
from ledger.errors import LedgerError
from ledger.reconnect import Reconnecting
from ledger.storage import private_file

ROLES: Final = ("service", "officer", "auditor", "admin")
PREFIX: Final = "ldg_"
NAME_PATTERN: Final = "^[A-Za-z0-9][A-Za-z0-9._@:/-]{0,99}$"
_NAME = re.compile(NAME_PATTERN)

_SCHEMA = """CREATE TABLE IF NOT EXISTS ledger_tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT)"""


@dataclass(frozen=True)
class Token:
    """A token's record (never the token itself)."""

    id: str
    name: str
    role: str
    created_at: str
    revoked_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    """Token names become actors, kept in the clear in every event the token writes and
    never shredded: short, plain identifiers, screened like free text. The name is never
    repeated in the error (it may be the very personal value refused)."""
    if not _NAME.fullmatch(name):  # fullmatch: `$` alone lets a final newline through
        raise LedgerError(
            "invalid_command",
            "a token name is 1-100 characters: letters, digits and . _ @ : / - "
            "(starting with a letter or digit)",
        )
    found = personal_data_in(name)
    if found is not None:
        raise LedgerError(
            "invalid_command",
            f"a token name must not hold personal data, and it holds what looks like {found}: "
            "it is the actor kept in the clear in every event the token writes; name the "
            "service or use staff initials",
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise LedgerError("invalid_command", f"a role is one of: {', '.join(ROLES)}")
    return role


class TokenStore(Reconnecting):
    """Create, find, list and revoke tokens; thread-safe, one connection, short transactions.

    `authenticate` keeps answers for `cache_seconds` so a busy server does not ask the
    database on every request; a revocation therefore takes effect within that time. A
    PostgreSQL connection the server closed is replaced at the next read or transaction
    (`Reconnecting`): without that, one restart of the database failed every request of
    a running server from then on.
    """

    def __init__(self, url: DatabaseURL, *, cache_seconds: float = 1.0) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Token | None]] = {}
        self._cache_seconds = cache_seconds
        self.connect = self._connect
        self.conn = self._connect()
        self._write(lambda cur: cur.execute(_SCHEMA))

    @classmethod
    def open(cls, settings: Settings, *, cache_seconds: float = 1.0) -> TokenStore:
        # the owner's alone, as `Ledger.open` makes it: `token create` may come first
        settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(settings.database, cache_seconds=cache_seconds)

    def _connect(self) -> Any:
        if self._url.backend == "sqlite":
            path = self._url.sqlite_path
            assert path is not None
            private_file(path)  # `token create` may be the first to make it
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            return conn
        import psycopg

        pg = psycopg.connect(self._url.conninfo(), autocommit=True)
        if self._url.schema:
            pg.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._url.schema}"')
            pg.execute(f'SET search_path TO "{self._url.schema}"')
        return pg

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # -- SQL on either backend -----------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql if self._url.backend == "sqlite" else sql.replace("?", "%s")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            rows: list[tuple[Any, ...]] = self.reconnecting(
                lambda: self.conn.execute(self._sql(sql), tuple(params)).fetchall()
            )
            return rows

    def _write(self, action: Any) -> int:
        """Run `action(conn)` in one transaction; returns the affected row count."""
        with self._lock:
            sqlite = self._url.backend == "sqlite"
            self.reconnecting(lambda: self.conn.execute("BEGIN IMMEDIATE" if sqlite else "BEGIN"))
            try:
                if sqlite:
                    count = action(_SQLiteCursor(self.conn)).rowcount
                else:
                    with self.conn.cursor() as cur:
                        action(_PgCursor(cur))
                        count = cur.rowcount
            except BaseException:
                self.rollback_if_open()
                raise
            self.conn.execute("COMMIT")
            return int(count)

    # -- operations ------------------------------------------------------------------

    def create(self, role: str, name: str) -> tuple[str, Token]:
        """A new token (returned once, in the clear) and its record."""
        check_role(role)
        check_name(name)
        token = PREFIX + secrets.token_urlsafe(32)
        record = Token(
            id=uuid.uuid4().hex[:12],
            name=name,
            role=role,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            revoked_at=None,
        )
        self._write(
            lambda cur: cur.execute(
                "INSERT INTO ledger_tokens (id, hash, name, role, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (record.id, token_hash(token), name, role, record.created_at),
            )
        )
        return token, record

    def cached(self, token: str) -> tuple[bool, Token | None]:
        """(True, answer) if `authenticate` can answer without the database."""
        if not token.startswith(PREFIX) or len(token) > 200:
            return True, None
        cached = self._cache.get(token_hash(token))
        if cached is not None and time.monotonic() - cached[0] < self._cache_seconds:
            return True, cached[1]
        return False, None

    def authenticate(self, token: str) -> Token | None:
        """The live token with this value, or None (unknown, malformed or revoked)."""
        known, answer = self.cached(token)
        if known:
            return answer
        digest = token_hash(token)
        now = time.monotonic()
        rows = self._query(
            "SELECT id, name, role, created_at, revoked_at FROM ledger_tokens WHERE hash = ?",
            (digest,),
        )
        found = Token(*rows[0]) if rows else None
        if found is not None and found.revoked_at is not None:
            found = None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, found)
        return found

    def all(self) -> list[Token]:
        rows = self._query(
            "SELECT id, name, role, created_at, revoked_at FROM ledger_tokens "
            "ORDER BY created_at, id"
        )
        return [Token(*row) for row in rows]

    def revoke(self, id_or_name: str) -> list[Token]:
        """Revoke the token with this id, or every live token with this name."""
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        live = [t for t in self.all() if t.revoked_at is None]
        chosen = [t for t in live if t.id == id_or_name] or [
            t for t in live if t.name == id_or_name
        ]
        for token in chosen:
            self._write(
                lambda cur, token_id=token.id: cur.execute(
                    "UPDATE ledger_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    (stamp, token_id),
                )
            )
        self._cache.clear()
        return [Token(t.id, t.name, t.role, t.created_at, stamp) for t in chosen]

    def any_live(self) -> bool:
        return bool(self._query("SELECT 1 FROM ledger_tokens WHERE revoked_at IS NULL LIMIT 1"))


class _SQLiteCursor:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, tuple(params))


class _PgCursor:
    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.cur.execute(sql.replace("?", "%s"), tuple(params))
