"""Creating the ledger's storage: SQLite files readable by their owner only, and tables
created safely when several processes start at once on one PostgreSQL database.

`CREATE TABLE IF NOT EXISTS` and `CREATE OR REPLACE FUNCTION` are idempotent, but
PostgreSQL refuses two of them at the same moment on one catalogue row ("tuple
concurrently updated"). Every process therefore creates its tables under one session-level
advisory lock per database; SQLite needs nothing (its writers are serialised already).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ledger.config import DatabaseURL

LOCK_ID = 0x4C45444745520001  # "LEDGER" + 1: the ledger's table-creation lock


def private_file(path: Path | None) -> None:
    """Create a SQLite database file readable by its owner only, before SQLite does (with
    the umask's mode, 0644 as a rule); its WAL and shared-memory files take its mode. An
    existing file is left as it is."""
    if path is not None and not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


@contextmanager
def creation_lock(*urls: DatabaseURL) -> Iterator[None]:
    """Hold the table-creation lock of every PostgreSQL database among `urls`, and make
    sure their schemas exist (the library creates tables, not schemas: a ledger whose key
    store was in a schema of its own found its own schema missing)."""
    import psycopg

    locked: dict[str, Any] = {}
    try:
        for url in urls:
            if url.backend != "postgres":
                continue
            conn = locked.get(url.conninfo())
            if conn is None:
                conn = psycopg.connect(url.conninfo(), autocommit=True)
                locked[url.conninfo()] = conn
                conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
            if url.schema:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{url.schema}"')
        yield
    finally:
        for conn in locked.values():
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
            finally:
                conn.close()
