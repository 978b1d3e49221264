"""`ledger sweep --every`: the retention sweeper as a worker process. It shreds what falls
due while it runs, prints one JSON report a sweep, stops cleanly on SIGTERM, and on
PostgreSQL waits out the database going away (its connections closed, new ones refused):
it logs each failed sweep and tries again shortly, and shreds once the database is back."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.config import Settings
from ledger.facade import Ledger
from tests.conftest import Outage, ledger_process, until_logged

ARGS = ["sweep", "--every", "0.2s", "--json"]
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
    with ledger_process(ledger_env, ARGS, tmp_path / "sweeper.err") as process:
        yield process


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
def test_the_sweeper_waits_out_a_database_outage(
    ledger: Ledger,
    ledger_env: dict[str, str],
    settings: Settings,
    outage: Outage,
    tmp_path: Path,
) -> None:
    with ledger_process(outage.worker_env(ledger_env), ARGS, tmp_path / "sweeper.err") as sweeper:
        before = _old_customer(ledger)
        _until_shredded(ledger, before, sweeper)
        assert outage.begin() >= 1
        during = _old_customer(ledger)  # due while the sweeper cannot connect
        until_logged(settings, "sweep_database_unavailable", more_than=0, process=sweeper)
        assert sweeper.poll() is None and ledger.subject(during)["status"] == "active"
        outage.end()
        _until_shredded(ledger, during, sweeper)
        reported = {s["subject"] for r in _reports(sweeper) for s in r["shredded"]}
        assert reported == {before, during}
