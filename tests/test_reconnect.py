"""`Backoff`: the pauses of a worker waiting for a database that went away."""

from __future__ import annotations

import sqlite3

import psycopg
from eventsourcing.persistence import OperationalError

from ledger.reconnect import Backoff, unavailable_errors


def test_the_pause_doubles_up_to_the_most_and_starts_again_after_a_success() -> None:
    backoff = Backoff(first=0.5, most=4.0)
    assert [backoff.failed() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.succeeded()
    assert backoff.failed() == 0.5


def test_a_most_below_the_first_pause_bounds_it() -> None:
    backoff = Backoff(first=0.5, most=0.2)  # `sweep --every 0.2s`
    assert [backoff.failed() for _ in range(3)] == [0.2, 0.2, 0.2]


def test_what_counts_as_a_database_gone_away() -> None:
    gone = unavailable_errors()
    for error in (
        OperationalError("closed"),
        psycopg.OperationalError("closed"),
        psycopg.InterfaceError("closed"),
        sqlite3.OperationalError("database is locked"),
    ):
        assert isinstance(error, gone)
    for fault in (ValueError("bug"), psycopg.ProgrammingError("bad SQL"), KeyError("x")):
        assert not isinstance(fault, gone)
