"""`ledger sweep --every`: the retention sweeper as a worker process. It shreds what falls
due while it runs, prints one JSON report a sweep, stops cleanly on SIGTERM, and on
PostgreSQL outlives the database closing its connections (it logs the failed sweep and
tries again shortly)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.config import Settings
from ledger.facade import Ledger
from tests.conftest import close_connections

APP_NAME = f"ledger-sweeper-{uuid.uuid4().hex[:8]}"  # the sweeper's connections (PGAPPNAME)
ENDED = "2024-03-31T12:00:00+02:00"  # customer data is kept for months after this, not years


def _old_customer(ledger: Ledger) -> str:
    """A customer whose relationship ended long ago: its customer data is past due."""
    subject = str(uuid.uuid4())
    at = {"subject": subject, "occurred_at": "2024-01-10T09:00:00+01:00"}
    basis = {"purpose": "customer_administration", "legal_basis": "contract"}
    results = ledger.execute_many(
        [
            {"type": "register_subject", "kind": "customer", **basis, **at}
            | {"identifiers": {"phone": "+4511223344"}},
            {"type": "collect", "category": "name", "value": "Gammel Kunde", **basis, **at}
            | {"source": "subject"},
            {"type": "collect", "category": "address", "value": "Nytorv 2", **basis, **at}
            | {"source": "subject"},
            {"type": "start_relationship", "relationship": "customer", **at},
            {"type": "end_relationship", "relationship": "customer", **at, "occurred_at": ENDED},
        ]
    )
    assert all(r["ok"] for r in results), results
    return subject


@pytest.fixture
def sweeper(ledger_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(ledger_env, PGAPPNAME=APP_NAME)
    process = subprocess.Popen(
        [sys.executable, "-m", "ledger", "sweep", "--every", "0.2s", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "sweeper.err").open("wb"),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _until_shredded(ledger: Ledger, subject: str, sweeper: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while ledger.subject(subject)["status"] != "partially_erased":
        assert sweeper.poll() is None, "the sweeper exited"
        assert time.monotonic() < deadline, ledger.subject(subject)
        time.sleep(0.1)


def _reports(sweeper: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    """Stop the sweeper (SIGTERM: it must exit 0) and read every report it printed."""
    sweeper.send_signal(signal.SIGTERM)
    out, _ = sweeper.communicate(timeout=15)
    assert sweeper.returncode == 0
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]


def test_the_sweeper_shreds_what_falls_due_while_it_runs(
    ledger: Ledger, sweeper: subprocess.Popen[bytes]
) -> None:
    first = _old_customer(ledger)
    _until_shredded(ledger, first, sweeper)
    second = _old_customer(ledger)  # written while it runs
    _until_shredded(ledger, second, sweeper)
    reports = _reports(sweeper)
    shredded = [(s["subject"], s["scope"]) for r in reports for s in r["shredded"]]
    assert sorted(shredded) == sorted([(first, "customer_data"), (second, "customer_data")])
    assert len(reports) >= 2 and not any(r["dry_run"] for r in reports)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_the_sweeper_outlives_the_database_closing_its_connections(
    ledger: Ledger, sweeper: subprocess.Popen[bytes], settings: Settings
) -> None:
    _until_shredded(ledger, _old_customer(ledger), sweeper)
    for _ in range(2):
        assert close_connections(APP_NAME) >= 1
        _until_shredded(ledger, _old_customer(ledger), sweeper)
    assert len({s["subject"] for r in _reports(sweeper) for s in r["shredded"]}) == 3
    assert settings.log_path is not None
    assert "sweep_database_unavailable" in settings.log_path.read_text()
