"""SQLite copies ledger.db's write-ahead log back into the file every 10,000 pages
(40 MB), not every 1,000: the connections that write events, the read models' and the
audit log's.

With SQLite's default a grown ledger paid for a checkpoint and its fsync every second or
third 1,000-command batch (the pages a batch changes lie all over the primary key's
B-tree): at 300k events the event store's commits took 13.3 ms a batch, 7.6 ms now
(`benchmarks/bench_append.py`, README). The key store keeps SQLite's default: every
erasure empties its log, and a bigger one made erasures slower than their goal. (After
large writes a thread copies both logs back anyway, `ledger.walcopy`: these thresholds
are for everything else, and are tested here without it.)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ledger.audit import service
from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.facade import Ledger
from tests.command_support import customers
from tests.conftest import MASTER_KEY


def _frames_in_log(path: Path) -> int:
    """How many pages the file's write-ahead log holds (a passive checkpoint reports it)."""
    with sqlite3.connect(path) as conn:
        busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0
    return int(frames)


def test_the_logs_grow_past_a_thousand_pages_before_they_are_copied_back(
    tmp_path: Path, clock: FixedClock
) -> None:
    env = {"LEDGER_HOME": str(tmp_path / "home"), "LEDGER_MASTER_KEY": MASTER_KEY}
    settings = Settings.from_env(env)
    with Ledger.open(settings, clock=clock) as ledger:
        copier, ledger.app.wal_copier = ledger.app.wal_copier, None  # SQLite's own copying
        assert copier is not None
        copier.close()
        database = settings.database.sqlite_path
        assert database is not None
        for _ in range(4):
            results = ledger.execute_many(customers(1000, "email", "phone"))
            assert all(r["ok"] for r in results)
        written = _frames_in_log(database)  # by the event store's connections alone
        # That passive checkpoint copied every frame back, so the next commit starts the
        # log over: what it holds next is what the read models and the audit log wrote.
        ledger.subject(results[0]["subject"])  # the read models catch up and commit
        service.seal(ledger)  # and the audit log
        written_after = _frames_in_log(database)
    assert 1000 < written < 10_000, written
    assert 1000 < written_after < 10_000, written_after
