"""A unit of work's new keys commit before its events (DESIGN 4.3: keys first).

If writing the keys fails, no event is written; a key conflict (another writer made the
same generation) is retried like any race. Both sizes of save are held to it: a handful
of events (the library's insert) and a batch (COPY on PostgreSQL).

(Writing the keys on a thread of their own while the events were sent was tried: on two
cores it was no quicker, 1 % on PostgreSQL and 5 % slower on SQLite.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.crypto.keystore import KeyConflict, KeySession, KeyStoreError
from ledger.facade import Ledger
from tests.command_support import customers

SIZES = [1, 40]  # commands: below and above the PostgreSQL recorder's COPY threshold


def _events(ledger: Ledger) -> int:
    return sum(1 for _ in ledger.notifications())


@pytest.fixture
def watcher(settings: Settings, clock: FixedClock) -> Iterator[Ledger]:
    """A second ledger on the same store: it sees only what has committed."""
    with Ledger.open(settings, clock=clock) as other:
        yield other


@pytest.mark.parametrize("size", SIZES)
def test_no_event_commits_before_its_keys(
    ledger: Ledger, watcher: Ledger, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    write = ledger.keystore._write_session
    seen: list[tuple[int, int]] = []

    def slow(session: KeySession) -> None:
        time.sleep(0.3)  # were the events written meanwhile, they would show
        seen.append((watcher.max_position(), len(watcher.keystore.records(subjects[0]))))
        write(session)

    monkeypatch.setattr(ledger.keystore, "_write_session", slow)
    commands = customers(size, "email")
    subjects = [c["subject"] for c in commands]
    assert all(r["ok"] for r in ledger.execute_many(commands))
    assert seen == [(0, 0)]  # neither the events nor the keys were visible yet
    assert watcher.max_position() == 2 * size  # registered, e-mail collected
    assert watcher.keystore.records(subjects[0])  # and now both are


@pytest.mark.parametrize("size", SIZES)
def test_keys_that_cannot_be_written_leave_nothing_written(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    def refused(session: KeySession) -> None:
        raise KeyStoreError("the master key was rotated")

    monkeypatch.setattr(ledger.keystore, "_write_session", refused)
    commands = customers(size, "email")
    with pytest.raises(KeyStoreError):
        ledger.execute_many(commands)
    assert ledger.max_position() == 0
    assert ledger.keystore.records(commands[0]["subject"]) == []
    monkeypatch.undo()  # the same commands go through once the key store is back
    assert all(r["ok"] for r in ledger.execute_many(commands))
    assert _events(ledger) == 2 * size  # (a sequence is not rolled back: ids may skip)


@pytest.mark.parametrize("size", SIZES)
def test_a_key_conflict_is_retried_and_written_once(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    write = ledger.keystore._write_session
    attempts: list[int] = []

    def first_loses(session: KeySession) -> None:
        attempts.append(len(session.new_keys))
        if len(attempts) == 1:
            raise KeyConflict("a key generation was created concurrently")
        write(session)

    monkeypatch.setattr(ledger.keystore, "_write_session", first_loses)
    commands = customers(size, "email")
    assert all(r["ok"] for r in ledger.execute_many(commands))
    assert len(attempts) == 2
    assert _events(ledger) == 2 * size  # each event once
    assert len(ledger.keystore.records(commands[-1]["subject"])) == 1
