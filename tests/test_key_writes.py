"""Where a unit of work's new keys commit (DESIGN 4.3).

A key store apart from the events (SQLite's `keys.db`, or a PostgreSQL key store in
another schema or database): the keys commit first, in a transaction of their own, and no
event commits before them; if writing them fails, no event is written; a key conflict
(another writer made the same generation) is retried like any race.

A key store beside the events in one PostgreSQL database (the default there): the keys,
the events and the new subjects' index rows commit in one transaction
(`ledger.crypto.keystore.KeysWithEvents`), so none is ever seen without the others.

Every size of save is held to it: a handful of events (the library's insert), a batch
(COPY on PostgreSQL), and a batch split with a second process (`ledger.parallel`).

(Writing the keys on a thread of their own while the events were sent was tried: on two
cores it was no quicker, 1 % on PostgreSQL and 5 % slower on SQLite.)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
import psycopg
import pytest

from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.crypto.keystore import KeyConflict, KeyRow, KeyStoreError, KeysWithEvents
from ledger.facade import Ledger
from ledger.parallel import PARALLEL_FROM
from tests.command_support import customers, ready_to_split
from tests.conftest import MASTER_KEY, PG_URL, _conninfo

# commands: below and above the PostgreSQL recorder's COPY threshold, and a batch split
# with a second process (`ledger.parallel`), whose share's keys this process writes
SIZES = [1, 40, 250]


def _events(ledger: Ledger) -> int:
    return sum(1 for _ in ledger.notifications())


@pytest.fixture
def apart(settings: Settings) -> Iterator[Settings]:
    """The ledger's settings with the key store apart from the events: SQLite's own file,
    or on PostgreSQL a schema of its own (`LEDGER_KEYSTORE_URL`)."""
    if settings.database.backend == "sqlite":
        yield settings
        return
    keys = dataclasses.replace(settings.database, schema=settings.database.schema + "_keys")
    yield dataclasses.replace(settings, keystore=keys)
    with psycopg.connect(_conninfo(PG_URL), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{keys.schema}" CASCADE')


def _size(request: pytest.FixtureRequest) -> int:
    """The test's batch size (`SIZES`)."""
    callspec = getattr(request.node, "callspec", None)
    return int(callspec.params.get("size", 0)) if callspec else 0


@pytest.fixture
def keys_apart(
    apart: Settings, clock: FixedClock, request: pytest.FixtureRequest
) -> Iterator[Ledger]:
    with Ledger.open(apart, clock=clock) as opened:
        assert not opened.app._keys_with_events
        ready_to_split(opened, _size(request))
        yield opened


@pytest.fixture
def watcher(apart: Settings, clock: FixedClock) -> Iterator[Ledger]:
    """A second ledger on the same store: it sees only what has committed."""
    with Ledger.open(apart, clock=clock) as other:
        yield other


@pytest.mark.parametrize("size", SIZES)
def test_no_event_commits_before_its_keys(
    keys_apart: Ledger, watcher: Ledger, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    write = keys_apart.keystore.write_keys
    seen: list[tuple[int, int]] = []

    def slow(rows: Sequence[KeyRow]) -> None:
        time.sleep(0.3)  # were the events written meanwhile, they would show
        seen.append((watcher.max_position(), len(watcher.keystore.records(subjects[0]))))
        write(rows)

    monkeypatch.setattr(keys_apart.keystore, "write_keys", slow)
    commands = customers(size, "email")
    subjects = [c["subject"] for c in commands]
    assert all(r["ok"] for r in keys_apart.execute_many(commands))
    assert seen == [(0, 0)]  # neither the events nor the keys were visible yet
    assert watcher.max_position() == 2 * size  # registered, e-mail collected
    assert watcher.keystore.records(subjects[0])  # and now both are


@pytest.mark.parametrize("size", SIZES)
def test_keys_that_cannot_be_written_leave_nothing_written(
    keys_apart: Ledger, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    def refused(rows: Sequence[KeyRow]) -> None:
        raise KeyStoreError("the master key was rotated")

    monkeypatch.setattr(keys_apart.keystore, "write_keys", refused)
    commands = customers(size, "email")
    with pytest.raises(KeyStoreError):
        keys_apart.execute_many(commands)
    assert keys_apart.max_position() == 0
    assert keys_apart.keystore.records(commands[0]["subject"]) == []
    monkeypatch.undo()  # the same commands go through once the key store is back
    assert all(r["ok"] for r in keys_apart.execute_many(commands))
    assert _events(keys_apart) == 2 * size  # (a sequence is not rolled back: ids may skip)


@pytest.mark.parametrize("size", SIZES)
def test_a_key_conflict_is_retried_and_written_once(
    keys_apart: Ledger, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    write = keys_apart.keystore.write_keys
    attempts: list[int] = []

    def first_loses(rows: Sequence[KeyRow]) -> None:
        attempts.append(len(rows))
        if len(attempts) == 1:
            raise KeyConflict("a key generation was created concurrently")
        write(rows)

    monkeypatch.setattr(keys_apart.keystore, "write_keys", first_loses)
    commands = customers(size, "email")
    assert all(r["ok"] for r in keys_apart.execute_many(commands))
    assert len(attempts) == 2
    assert _events(keys_apart) == 2 * size  # each event once
    assert len(keys_apart.keystore.records(commands[-1]["subject"])) == 1


# -- PostgreSQL, the key store beside the events: one transaction ------------------------


@pytest.fixture
def together_settings(pg_schema: str, tmp_path: Any) -> Settings:
    return Settings.from_env(
        {
            "LEDGER_HOME": str(tmp_path / "home"),
            "LEDGER_MASTER_KEY": MASTER_KEY,
            "LEDGER_DATABASE_URL": f"{PG_URL}?schema={pg_schema}",
        }
    )


@pytest.fixture
def together(
    together_settings: Settings, clock: FixedClock, request: pytest.FixtureRequest
) -> Iterator[Ledger]:
    with Ledger.open(together_settings, clock=clock) as opened:
        assert opened.app._keys_with_events
        ready_to_split(opened, _size(request))
        yield opened


@pytest.fixture
def onlooker(together_settings: Settings, clock: FixedClock) -> Iterator[Ledger]:
    with Ledger.open(together_settings, clock=clock) as other:
        yield other


def _around_send(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[], None], after: Callable[[], None]
) -> None:
    """Run `before` as the key store's rows are queued in the event transaction, and
    `after` as their check runs (the statements have run, nothing has committed)."""
    send = KeysWithEvents.send

    def watched(self: KeysWithEvents, conn: Any) -> Callable[[], None]:
        before()
        check = send(self, conn)

        def checked() -> None:
            after()
            check()

        return checked

    monkeypatch.setattr(KeysWithEvents, "send", watched)


@pytest.mark.parametrize("size", SIZES)
def test_keys_events_and_index_rows_commit_together(
    together: Ledger, onlooker: Ledger, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    commands = customers(size, "email")
    subjects = [c["subject"] for c in commands]
    seen: list[tuple[int, int, list[str]]] = []

    def look() -> None:
        time.sleep(0.2)  # were anything committed meanwhile, it would show
        seen.append(
            (
                onlooker.max_position(),
                len(onlooker.keystore.records(subjects[0])),
                onlooker.find("email", "kunde0@example.dk"),
            )
        )

    _around_send(monkeypatch, look, look)
    assert all(r["ok"] for r in together.execute_many(commands))
    # nothing, before or after the rows went in (a split batch sends its rows in parts)
    assert len(seen) >= (4 if size >= PARALLEL_FROM else 2)
    assert all(look == (0, 0, []) for look in seen)
    assert onlooker.max_position() == 2 * size  # and now everything
    assert len(onlooker.keystore.records(subjects[0])) == 1
    assert onlooker.find("email", "kunde0@example.dk") == [subjects[0]]


@pytest.mark.parametrize("size", SIZES)
def test_a_rotated_master_key_leaves_nothing_written(
    together: Ledger, onlooker: Ledger, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """The master key rotated by another process after this one opened the store: its
    new keys would open under nothing anyone holds, so none of the unit of work stays."""
    commands = customers(size, "email")
    rotated = b"\x07" * 32
    onlooker.keystore.rewrap(rotated)
    with pytest.raises(KeyStoreError, match=r"rotated|does not match"):
        together.execute_many(commands)
    assert onlooker.max_position() == 0
    assert onlooker.keystore.records(commands[0]["subject"]) == []
    rows = onlooker.keystore._db.execute("SELECT count(*) FROM ledger_lookup")
    assert rows == [(0,)]


@pytest.mark.parametrize("size", SIZES)
def test_a_key_made_concurrently_is_a_conflict_retried_and_written_once(
    together: Ledger, onlooker: Ledger, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Another process makes the same key generation between this unit of work's key
    read and its commit: the unique key refuses this one's, the whole transaction rolls
    back, and the retry opens the key the other made."""
    commands = customers(size, "email")
    subject = commands[-1]["subject"]
    made: list[bytes] = []

    def race() -> None:
        if not made:
            made.append(onlooker.keystore.ensure_key(subject, "customer_data").key)

    _around_send(monkeypatch, race, lambda: None)
    assert all(r["ok"] for r in together.execute_many(commands))
    assert _events(together) == 2 * size  # each event once
    (record,) = together.keystore.records(subject)
    assert together.keystore.key(subject, "customer_data", record.kid) == made[0]
    shown = together.subject(subject, reveal=True, purpose="kundeservice")
    assert f"kunde{size - 1}@example.dk" in orjson.dumps(shown).decode()
