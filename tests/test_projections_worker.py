"""`ledger projections run`: the worker that keeps the read models current, as a real
process. It applies events as other processes write them (woken by LISTEN/NOTIFY on
PostgreSQL, polling on SQLite), stops cleanly on SIGTERM, and on PostgreSQL waits out the
database going away (its connections closed, new ones refused: a restart, a failover):
it logs each failed try, and once the database is back goes on from its position."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.config import Settings
from ledger.facade import Ledger
from tests.command_support import customers
from tests.conftest import Outage, ledger_process, until_logged

ARGS = ["projections", "run", "--poll", "0.1"]


@pytest.fixture
def worker(ledger_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with ledger_process(ledger_env, ARGS, tmp_path / "worker.err") as process:
        yield process


def _register(ledger: Ledger, count: int) -> None:
    for command in customers(count):  # one transaction each
        assert ledger.execute(command)["ok"]


def _until_current(ledger: Ledger, worker: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the worker's tracked position reaches the log's head (this process applies
    nothing itself: it only reads the position)."""
    models = ledger.read_models
    deadline = time.monotonic() + timeout
    while models.position() < models.head():
        assert worker.poll() is None, "the worker exited"
        assert time.monotonic() < deadline, (models.position(), models.head())
        time.sleep(0.05)


def _stopped(worker: subprocess.Popen[bytes]) -> int:
    worker.send_signal(signal.SIGTERM)
    return worker.wait(timeout=15)


def test_the_worker_applies_events_as_they_come_and_stops_on_sigterm(
    ledger: Ledger, worker: subprocess.Popen[bytes]
) -> None:
    _register(ledger, 3)
    _until_current(ledger, worker)
    for _ in range(3):  # later events wake it again
        _register(ledger, 2)
        _until_current(ledger, worker)
    assert ledger.read_models.position() == ledger.max_position() == 9
    assert _stopped(worker) == 0


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_the_worker_waits_out_a_database_outage(
    ledger: Ledger,
    ledger_env: dict[str, str],
    settings: Settings,
    outage: Outage,
    tmp_path: Path,
) -> None:
    with ledger_process(outage.worker_env(ledger_env), ARGS, tmp_path / "worker.err") as worker:
        _register(ledger, 2)
        _until_current(ledger, worker)
        assert outage.begin() >= 1  # its LISTEN connection at least
        _register(ledger, 3)  # written while the worker cannot connect
        until_logged(settings, "read_models_database_unavailable", more_than=0, process=worker)
        assert worker.poll() is None and ledger.read_models.position() < ledger.max_position()
        outage.end()
        _until_current(ledger, worker)
        assert ledger.read_models.position() == ledger.max_position() == 5
        assert _stopped(worker) == 0
