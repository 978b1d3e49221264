"""Long-lived PostgreSQL connections that outlive the server closing them.

A restart, a failover, `pg_terminate_backend` or an idle timeout closes a connection from
the server's side; psycopg finds out at the next statement. The stores that keep one
connection for a process's life (the key store, the audit log, the HTTP tokens) replace
it then, for statements that are safe to send again: a read, or the BEGIN of a
transaction, before anything of the transaction was done. A connection lost inside a
transaction fails that transaction (it went with the connection); its owner rolls back,
which then has nothing to undo, and the next statement runs on a new connection.

Workers that run for days (`ledger projections run`, `ledger sweep --every`) wait for a
database that went away (`unavailable_errors`) and try again after a `Backoff`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

_T = TypeVar("_T")


def is_closed(conn: Any) -> bool:
    """Whether psycopg has found this connection closed (SQLite's never say so)."""
    return bool(getattr(conn, "closed", False))


class Reconnecting:
    """A store's one connection, `conn`, made again by `connect` once found closed."""

    conn: Any
    connect: Callable[[], Any] | None  # None: the connection cannot be made again (SQLite)

    def reconnecting(self, statement: Callable[[], _T]) -> _T:
        """Run `statement` (which uses `self.conn`), safe to send twice: on a new
        connection if this one is known closed, and once more on a new one if it finds
        this one closed."""
        if self.connect is not None and is_closed(self.conn):
            self.conn = self.connect()
        try:
            return statement()
        except Exception:
            if self.connect is None or not is_closed(self.conn):
                raise
        self.conn = self.connect()
        return statement()

    def rollback_if_open(self) -> None:
        """End a failed transaction; on a connection the server closed, it has ended."""
        try:
            self.conn.execute("ROLLBACK")
        except Exception:
            if not is_closed(self.conn):
                raise


@cache
def unavailable_errors() -> tuple[type[BaseException], ...]:
    """The errors of a database that went away or cannot be reached for now (a restart,
    a failover, closed connections, a lock held past the timeout): a worker waits and
    tries again. Anything else is a fault, and ends the worker with its traceback."""
    import psycopg
    from eventsourcing.persistence import InterfaceError, OperationalError

    return (
        OperationalError,
        InterfaceError,
        psycopg.OperationalError,
        psycopg.InterfaceError,
        sqlite3.OperationalError,
    )


class Backoff:
    """The pause before trying a database that went away again: it doubles from `first`
    up to `most` seconds, and starts from `first` again after a success."""

    def __init__(self, first: float = 0.5, most: float = 30.0) -> None:
        self.first = min(first, most)
        self.most = most
        self._next = self.first

    def failed(self) -> float:
        """The pause to take now."""
        pause = self._next
        self._next = min(self._next * 2, self.most)
        return pause

    def succeeded(self) -> None:
        self._next = self.first
