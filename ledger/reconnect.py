"""Long-lived PostgreSQL connections that outlive the server closing them.

A restart, a failover, `pg_terminate_backend` or an idle timeout closes a connection from
the server's side; psycopg finds out at the next statement. The stores that keep one
connection for a process's life (the key store, the audit log, the HTTP tokens) replace
it then, for statements that are safe to send again: a read, or the BEGIN of a
transaction, before anything of the transaction was done. A connection lost inside a
transaction fails that transaction (it went with the connection); its owner rolls back,
which then has nothing to undo, and the next statement runs on a new connection.
"""

from __future__ import annotations

from collections.abc import Callable
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
