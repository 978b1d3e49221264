"""SQLite's write-ahead logs are copied back on a thread after large writes
(`ledger.walcopy`): the data reaches the database files while no commit waits for it,
the thread starts with the first large write and ends with the ledger, and a ledger
whose stores are all on PostgreSQL has none."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from benchmarks.bench_append import onboarding
from ledger.config import Settings
from ledger.facade import Ledger
from ledger.walcopy import WAL_COPY_FROM, WalCopier
from tests.conftest import MASTER_KEY, PG_URL


def _batch(customers: int, start: int = 0) -> list[dict[str, object]]:
    return [command for i in range(start, start + customers) for command in onboarding(i)]


def _copier_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ledger-wal-copy"]


def _wal_database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # only the copier copies
    conn.execute("CREATE TABLE t (x BLOB)")
    return conn


def test_a_nudge_copies_every_log_back_into_its_database(tmp_path: Path) -> None:
    paths = [tmp_path / "a.db", tmp_path / "b.db"]
    writers = [_wal_database(path) for path in paths]
    for conn in writers:
        conn.executemany("INSERT INTO t VALUES (randomblob(4000))", [()] * 200)
    before = [path.stat().st_size for path in paths]
    copier = WalCopier(paths)
    try:
        copier.nudge()
        assert copier.idle.wait(10)
        assert copier.copies == 1
        after = [path.stat().st_size for path in paths]
        assert all(a > b + 200 * 4000 for a, b in zip(after, before, strict=True))
        for conn in writers:  # everything in the log is in the database now
            busy, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            assert (busy, pages) == (0, copied)
    finally:
        copier.close()
        for conn in writers:
            conn.close()
    assert not _copier_threads()


def test_nudges_while_a_copy_runs_make_one_more_round(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    writer = _wal_database(path)
    copier = WalCopier([path])
    try:
        for _ in range(5):
            writer.executemany("INSERT INTO t VALUES (randomblob(4000))", [()] * 50)
            copier.nudge()
        assert copier.idle.wait(10)
        assert 1 <= copier.copies <= 5
        busy, pages, copied = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, pages) == (0, copied)
    finally:
        copier.close()
        writer.close()


def test_a_large_batch_has_its_logs_copied_back_and_closing_ends_the_thread(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env(
        {"LEDGER_HOME": str(tmp_path / "home"), "LEDGER_MASTER_KEY": MASTER_KEY}
    )
    with Ledger.open(settings, batch_processes=1) as ledger:
        copier = ledger.app.wal_copier
        assert copier is not None
        small = _batch(10)  # 70 commands: SQLite's own copying, as before
        assert len(small) < WAL_COPY_FROM
        assert all(r["ok"] for r in ledger.execute_many(small))
        assert copier.copies == 0 and not _copier_threads()
        events_file, keys_file = tmp_path / "home" / "ledger.db", tmp_path / "home" / "keys.db"
        before = events_file.stat().st_size, keys_file.stat().st_size
        assert all(r["ok"] for r in ledger.execute_many(_batch(30, start=10)))
        assert copier.idle.wait(10)
        assert copier.copies >= 1 and len(_copier_threads()) == 1
        assert events_file.stat().st_size > before[0]
        assert keys_file.stat().st_size > before[1]
        assert ledger.max_position() == 40 * 9
    assert not _copier_threads()


def test_a_ledger_all_on_postgresql_copies_no_logs(pg_schema: str, tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "LEDGER_HOME": str(tmp_path / "home"),
            "LEDGER_MASTER_KEY": MASTER_KEY,
            "LEDGER_DATABASE_URL": f"{PG_URL}?schema={pg_schema}",
        }
    )
    with Ledger.open(settings, batch_processes=1) as ledger:
        assert ledger.app.wal_copier is None
        assert all(r["ok"] for r in ledger.execute_many(_batch(30)))
    assert not _copier_threads()
