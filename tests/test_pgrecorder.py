"""Large saves on PostgreSQL go by COPY: same ids, order, locking, notices and errors.

`ledger.pgrecorder.CopyingPostgresRecorder` draws a block of notification ids under the
table lock and writes the rows with COPY. These tests hold it to what the library's insert
promises: ids in the order of the events, no gaps or repeats between writers, a NOTIFY
for listeners, and a duplicate version refused as the library's `IntegrityError` with
nothing written.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.facade import Ledger
from ledger.pgrecorder import COPY_FROM, CopyingPostgresRecorder
from tests.command_support import customers
from tests.conftest import MASTER_KEY, PG_URL, _conninfo

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def pg_ledger(pg_schema: str, tmp_path: Any) -> Iterator[Ledger]:
    env = {
        "LEDGER_HOME": str(tmp_path / "home"),
        "LEDGER_MASTER_KEY": MASTER_KEY,
        "LEDGER_DATABASE_URL": f"{PG_URL}?schema={pg_schema}",
    }
    with Ledger.open(Settings.from_env(env), clock=FixedClock(NOW)) as ledger:
        yield ledger


def _log(ledger: Ledger) -> list[tuple[int, str, int]]:
    return [
        (n.id, str(n.originator_id), n.originator_version)
        for n in ledger.app.recorder.select_notifications(start=1, limit=100_000)
    ]


def test_the_ledger_uses_it(pg_ledger: Ledger) -> None:
    assert isinstance(pg_ledger.app.recorder, CopyingPostgresRecorder)


def test_a_large_save_gets_the_next_ids_in_order(pg_ledger: Ledger) -> None:
    small = customers(3)
    assert all(r["ok"] for r in pg_ledger.execute_many(small))  # the library's insert
    large = customers(COPY_FROM * 3)
    assert all(r["ok"] for r in pg_ledger.execute_many(large))  # COPY
    after = customers(2)
    assert all(r["ok"] for r in pg_ledger.execute_many(after))
    log = _log(pg_ledger)
    subjects = [c["subject"] for c in (*small, *large, *after)]
    assert [subject for _, subject, _ in log] == subjects  # the order of the commands
    assert [n for n, _, _ in log] == list(range(1, len(subjects) + 1))  # no gap, no repeat
    assert pg_ledger.max_position() == len(subjects)


def test_concurrent_large_saves_share_the_log_without_gaps_or_repeats(
    pg_ledger: Ledger, pg_schema: str, tmp_path: Any
) -> None:
    env = {
        "LEDGER_HOME": str(tmp_path / "other"),
        "LEDGER_MASTER_KEY": MASTER_KEY,
        "LEDGER_DATABASE_URL": f"{PG_URL}?schema={pg_schema}",
    }
    batches = [customers(COPY_FROM * 2) for _ in range(8)]
    failures: list[BaseException] = []

    def write(ledger: Ledger, mine: list[list[dict[str, Any]]]) -> None:
        try:
            for batch in mine:
                assert all(r["ok"] for r in ledger.execute_many(batch))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    with Ledger.open(Settings.from_env(env), clock=FixedClock(NOW)) as other:
        threads = [
            threading.Thread(target=write, args=(pg_ledger, batches[0::2])),
            threading.Thread(target=write, args=(other, batches[1::2])),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert not failures, failures
    log = _log(pg_ledger)
    written = sum(len(b) for b in batches)
    assert [n for n, _, _ in log] == list(range(1, written + 1))
    positions = {subject: n for n, subject, _ in log}
    for batch in batches:  # each save is one contiguous block, in its own order
        ids = [positions[c["subject"]] for c in batch]
        assert ids == list(range(ids[0], ids[0] + len(batch)))


def test_a_duplicate_version_is_refused_and_nothing_is_written(pg_ledger: Ledger) -> None:
    assert all(r["ok"] for r in pg_ledger.execute_many(customers(COPY_FROM)))
    taken = pg_ledger.app.recorder.select_notifications(start=1, limit=1)[0]
    recorder = pg_ledger.app.recorder
    fresh = [StoredEvent(uuid.uuid4(), 1, taken.topic, taken.state) for _ in range(COPY_FROM - 1)]
    clash = StoredEvent(taken.originator_id, taken.originator_version, taken.topic, b"{}")
    before = pg_ledger.max_position()
    with pytest.raises(IntegrityError):
        recorder.insert_events([*fresh, clash])
    assert pg_ledger.max_position() == before
    assert len(_log(pg_ledger)) == before


def test_a_large_save_notifies_listeners(pg_ledger: Ledger, pg_schema: str) -> None:
    recorder = pg_ledger.app.recorder
    assert isinstance(recorder, CopyingPostgresRecorder)
    with psycopg.connect(_conninfo(PG_URL), autocommit=True) as listener:
        listener.execute(f'LISTEN "{recorder.channel_name}"')
        assert all(r["ok"] for r in pg_ledger.execute_many(customers(COPY_FROM)))
        heard = list(listener.notifies(timeout=10, stop_after=1))
    assert heard and heard[0].channel == recorder.channel_name


def test_copied_rows_hold_exactly_what_the_mapper_made(pg_ledger: Ledger) -> None:
    """Binary COPY stores the stored events byte for byte (and the ids as UUIDs)."""
    commands = customers(COPY_FROM * 2)
    assert all(r["ok"] for r in pg_ledger.execute_many(commands))
    mapper = pg_ledger.app.mapper
    notifications = pg_ledger.app.recorder.select_notifications(start=1, limit=1000)
    assert [str(n.originator_id) for n in notifications] == [c["subject"] for c in commands]
    for notification in notifications:
        again = mapper.to_stored_event(mapper.to_domain_event(notification))
        assert (again.originator_id, again.originator_version, again.topic, again.state) == (
            notification.originator_id,
            notification.originator_version,
            notification.topic,
            notification.state,
        )
