"""The ledger's SQLite connections keep their compiled statements.

The library opens connections with `cached_statements=True`, a cache of one statement,
so every statement that differed from the one before it was compiled again: nearly all
of them, as a batch alternates between a dozen (`ledger/sqliterecorder.py`). SQLite asks
a connection's authorizer about a statement while it compiles it, never when it runs, so
counting those calls counts compilations.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from eventsourcing.sqlite import SQLiteDatastore

from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.facade import Ledger
from ledger.sqliterecorder import StatementCachingPool
from tests.command_support import customers
from tests.conftest import MASTER_KEY


@pytest.fixture
def ledger(tmp_path: Path, clock: FixedClock) -> Iterator[Ledger]:
    """A ledger on SQLite (the PostgreSQL store has a driver of its own)."""
    env = {"LEDGER_HOME": str(tmp_path / "home"), "LEDGER_MASTER_KEY": MASTER_KEY}
    with Ledger.open(Settings.from_env(env), clock=clock) as opened:
        yield opened


@contextmanager
def compilations(datastore: SQLiteDatastore) -> Iterator[tuple[sqlite3.Cursor, list[int]]]:
    """A cursor of one of the datastore's pooled connections, and a list that gets an
    entry for each SELECT that connection compiles meanwhile."""
    compiled: list[int] = []

    def authorize(action: int, *_: object) -> int:
        if action == sqlite3.SQLITE_SELECT:
            compiled.append(action)
        return sqlite3.SQLITE_OK

    with datastore.transaction(commit=False) as cursor:
        raw: sqlite3.Cursor = cursor.sqlite_cursor
        raw.connection.set_authorizer(authorize)
        try:
            yield raw, compiled
        finally:
            raw.connection.set_authorizer(None)


def test_alternating_statements_are_compiled_once_each(ledger: Ledger) -> None:
    datastore = ledger.app.recorder.datastore  # type: ignore[attr-defined]
    assert isinstance(datastore.pool, StatementCachingPool)
    with compilations(datastore) as (cursor, compiled):
        for _ in range(20):
            cursor.execute("SELECT count(*) FROM stored_events").fetchall()
            cursor.execute("SELECT max(rowid) FROM stored_events").fetchall()
            cursor.execute("SELECT min(rowid) FROM stored_events").fetchall()
    assert len(compiled) == 3  # the library's connections compiled all 60


def test_the_read_models_share_the_statement_caching_pool(ledger: Ledger) -> None:
    recorder = ledger.read_models.recorder
    assert isinstance(recorder.datastore.pool, StatementCachingPool)  # type: ignore[attr-defined]
    results = ledger.execute_many(customers(3))
    assert all(r["ok"] for r in results)
    assert ledger.read_models.catch_up() == ledger.max_position()
    assert len(ledger.read_models.query("SELECT sid FROM rm_subjects")) == 3


def test_its_connections_are_the_librarys_otherwise(ledger: Ledger) -> None:
    """Write-ahead log, rows by name, autocommit (the library begins its transactions)."""
    datastore = ledger.app.recorder.datastore  # type: ignore[attr-defined]
    with datastore.transaction(commit=False) as cursor:
        raw: sqlite3.Cursor = cursor.sqlite_cursor
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.connection.row_factory is sqlite3.Row
        assert raw.connection.isolation_level is None
