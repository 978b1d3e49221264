"""SQLite's write-ahead logs copied back into their databases on a thread of their own.

SQLite copies a database's write-ahead log back into the database file (a checkpoint,
with an fsync) in the commit that leaves the log over its threshold: the key store's at
1,000 pages, nearly every 1,000-command batch (~860 pages of random index rows each);
`ledger.db`'s at 10,000 pages, every eighth batch or so, 40 MB at once. That commit, and
the batch around it, waits for the copy: 3-4 ms a batch on average on SQLite, with
40-60 ms spikes. After each large write a `WalCopier` copies the logs back meanwhile
(`PRAGMA wal_checkpoint(PASSIVE)`, which waits for no reader or writer), so the logs
stay under the thresholds and the commits do not copy.

Nothing about durability changes: commits still sync the log, and a copy interrupted by
a crash is resumed by SQLite. The thresholds stay as they are, for processes that write
without a copier and for a copier that falls behind. Shredding still empties the key
store's log at once itself (`KeyStore.compact`), which waits for a copy in progress.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ledger.logs import get_logger

log = get_logger("ledger.walcopy")

WAL_COPY_FROM: Final = 100  # commands in one write after which the logs are copied back


class WalCopier:
    """Copies the write-ahead logs of these SQLite databases back on a thread, when
    `nudge`d; started by the first nudge, stopped by `close`."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.copies = 0  # rounds done (each copies every log)
        self.idle = threading.Event()  # set while no round is due or running
        self.idle.set()

    def nudge(self) -> None:
        """Copy the logs back soon (once, however often it is nudged meanwhile)."""
        with self._lock:
            if self._closing:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ledger-wal-copy", daemon=True
                )
                self._thread.start()
            self.idle.clear()
            self._wake.set()

    def close(self) -> None:
        """Stop the thread after the round in progress, if any."""
        with self._lock:
            self._closing = True
            thread = self._thread
            self._wake.set()
        if thread is not None:
            thread.join(timeout=10)

    def _run(self) -> None:
        connections = [
            sqlite3.connect(path, isolation_level=None, check_same_thread=True)
            for path in self._paths
        ]
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._closing:
                    return
                for path, connection in zip(self._paths, connections, strict=True):
                    try:
                        # (busy, pages in the log, pages copied): busy when another
                        # connection is copying it, which does the same
                        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.OperationalError as exc:  # the next round does it
                        log.warning("wal_copy_failed", database=path.name, error=str(exc))
                with self._lock:
                    self.copies += 1
                    if not self._wake.is_set():
                        self.idle.set()
        finally:
            for connection in connections:
                connection.close()
            self.idle.set()
