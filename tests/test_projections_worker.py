"""`ledger projections run`: the worker that keeps the read models current, as a real
process. It applies events as other processes write them (woken by LISTEN/NOTIFY on
PostgreSQL, polling on SQLite), stops cleanly on SIGTERM, and on PostgreSQL outlives the
database closing its connections (a restart, a failover): it waits, reconnects and goes
on from its position."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.config import Settings
from ledger.facade import Ledger
from tests.command_support import customers
from tests.conftest import close_connections

APP_NAME = f"ledger-worker-{uuid.uuid4().hex[:8]}"  # the worker's connections (PGAPPNAME)


@pytest.fixture
def worker(ledger_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(ledger_env, PGAPPNAME=APP_NAME)
    output = (tmp_path / "worker.out").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ledger", "projections", "run", "--poll", "0.1"],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        output.close()


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
def test_the_worker_outlives_the_database_closing_its_connections(
    ledger: Ledger, worker: subprocess.Popen[bytes], settings: Settings
) -> None:
    _register(ledger, 2)
    _until_current(ledger, worker)
    for _ in range(2):
        assert close_connections(APP_NAME) >= 1  # its LISTEN connection at least
        _register(ledger, 3)
        _until_current(ledger, worker)
    assert ledger.read_models.position() == ledger.max_position() == 8
    assert settings.log_path is not None
    assert "read_models_database_unavailable" in settings.log_path.read_text()
    assert _stopped(worker) == 0
