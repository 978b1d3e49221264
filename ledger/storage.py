"""Creating tables safely when several processes start at once on one PostgreSQL database.

`CREATE TABLE IF NOT EXISTS` and `CREATE OR REPLACE FUNCTION` are idempotent, but
PostgreSQL refuses two of them at the same moment on one catalogue row ("tuple
concurrently updated"). Every process therefore creates its tables under one session-level
advisory lock per database; SQLite needs nothing (its writers are serialised already).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ledger.config import DatabaseURL

LOCK_ID = 0x4C45444745520001  # "LEDGER" + 1: the ledger's table-creation lock


@contextmanager
def creation_lock(*urls: DatabaseURL) -> Iterator[None]:
    """Hold the table-creation lock of every PostgreSQL database among `urls`."""
    import psycopg

    seen: set[str] = set()
    connections = []
    try:
        for url in urls:
            if url.backend != "postgres" or url.conninfo() in seen:
                continue
            seen.add(url.conninfo())
            conn = psycopg.connect(url.conninfo(), autocommit=True)
            connections.append(conn)
            conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        yield
    finally:
        for conn in connections:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
            finally:
                conn.close()
