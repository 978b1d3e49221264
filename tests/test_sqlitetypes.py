"""None, booleans and bytes are bound to SQLite through registered adapters
(`ledger.sqlitetypes`), which skip `sqlite3`'s search for an adaptation (an AttributeError
built and thrown away per value, 8 % of a rebuild's instructions): what is stored must be
exactly what `sqlite3` stores without them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from ledger.config import Settings
from ledger.facade import Ledger
from ledger.sqlitetypes import register_adapters

DIRECT = (type(None), bool, bytes)
VALUES: list[Any] = [None, True, False, b"", b"\x00\xffsealed", 0, 1, 2**62, 1.5, "tekst"]


@pytest.fixture
def without_adapters() -> Iterator[None]:
    """The process's adapters as `sqlite3` has them before the ledger registers its own."""
    saved = dict(sqlite3.adapters)
    for kind in DIRECT:
        sqlite3.adapters.pop((kind, sqlite3.PrepareProtocol), None)
    try:
        yield
    finally:
        sqlite3.adapters.clear()
        sqlite3.adapters.update(saved)


def _stored(values: list[Any]) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, flag INTEGER, note TEXT, blob)")
        conn.executemany(
            "INSERT INTO t (flag, note, blob) VALUES (?, ?, ?)", [(v, v, v) for v in values]
        )
        return conn.execute(
            "SELECT typeof(flag), flag, typeof(note), note, typeof(blob), blob FROM t ORDER BY n"
        ).fetchall()
    finally:
        conn.close()


def test_the_adapters_store_what_sqlite3_stores_without_them(without_adapters: None) -> None:
    plain = _stored(VALUES)
    register_adapters()
    assert all((kind, sqlite3.PrepareProtocol) in sqlite3.adapters for kind in DIRECT)
    assert _stored(VALUES) == plain
    assert [row[0] for row in plain[:5]] == ["null", "integer", "integer", "blob", "blob"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_ledger_on_sqlite_registers_them(without_adapters: None, settings: Settings) -> None:
    with Ledger.open(settings):
        assert all((kind, sqlite3.PrepareProtocol) in sqlite3.adapters for kind in DIRECT)
