"""Once the events are written, nothing after them reports the write as failed: a caller
would send the commands again and an HTTP group commit ran them again one by one, so
every command of the group was stored twice (found by a concurrency review: a full disk
under the log file, or the key store failing after the save)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from ledger.facade import Ledger
from tests.conftest import MASTER_KEY

CA = "customer_administration"


def _register(email: str) -> dict[str, Any]:
    return {
        "type": "register_subject",
        "kind": "customer",
        "purpose": CA,
        "legal_basis": "contract",
        "identifiers": {"email": email},
    }


def test_a_full_disk_under_the_log_fails_no_command(tmp_path: Path) -> None:
    """/dev/full refuses every write with ENOSPC."""
    env = {
        "LEDGER_HOME": str(tmp_path / "home"),
        "LEDGER_MASTER_KEY": MASTER_KEY,
        "LEDGER_LOG_FILE": "/dev/full",
        "PATH": "/usr/bin:/bin",
    }
    lines = "\n".join(json.dumps(_register(f"k{i}@example.dk")) for i in range(3))
    done = subprocess.run(
        [sys.executable, "-m", "ledger", "exec", "-"],
        input=lines,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["ok"] for line in done.stdout.splitlines()] == [True] * 3
    assert "log lines are being lost" in done.stderr
    counted = subprocess.run(
        [sys.executable, "-m", "ledger", "projections", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    (status,) = json.loads(counted.stdout)["projections"]
    assert status["subjects"] == 3  # each written once


def test_a_key_store_failure_after_the_save_reports_the_write(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("the key store is gone")

    results = ledger.execute_many([_register("a@example.dk"), _register("b@example.dk")])
    subjects = [r["subject"] for r in results]
    before = len(ledger.history(subjects[0]))
    # Known subjects' index rows are replaced after their events (on PostgreSQL a new
    # subject's are written with its events, in one transaction: test_key_writes.py).
    monkeypatch.setattr(ledger.keystore, "replace_lookups", broken)
    changed = ledger.execute_many(
        [
            {
                "type": "collect",
                "subject": subject,
                "category": "email",
                "value": f"ny{i}@example.dk",
                "purpose": CA,
                "legal_basis": "contract",
                "source": "subject",
            }
            for i, subject in enumerate(subjects)
        ]
    )
    assert [r["ok"] for r in changed] == [True, True]
    assert len(ledger.history(subjects[0])) == before + 1  # written, once
    assert ledger.find("email", "ny0@example.dk") == []  # unfindable until reindexed
    monkeypatch.undo()
    ledger.reindex_lookups()
    assert ledger.find("email", "ny0@example.dk") == [subjects[0]]

    monkeypatch.setattr(ledger.keystore, "shred_many", broken)
    erased = ledger.execute({"type": "erase", "subject": subjects[0]})
    assert erased["ok"] and erased["shredded"] == ["customer_data"]
    monkeypatch.undo()
    assert any(r.shredded_at is None for r in ledger.keystore.records(subjects[0]))
    ledger.reconcile_keys()  # what every later write and every sweep does
    assert all(r.shredded_at is not None for r in ledger.keystore.records(subjects[0]))


def test_a_snapshot_that_cannot_be_written_fails_no_command(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = ledger.execute(_register("s@example.dk"))["subject"]
    assert ledger.app.snapshots is not None

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("no room for snapshots")

    monkeypatch.setattr(ledger.app.snapshots, "put", broken)
    dialogue = {"type": "record_dialogue", "subject": subject}
    results = ledger.execute_many([dialogue] * 120)  # crosses the snapshot interval
    assert all(r["ok"] for r in results)
    assert [e["version"] for e in ledger.history(subject)][-1] == 122  # each written once


def test_an_erasure_and_a_bookkeeping_entry_in_one_group_both_stand(ledger: Ledger) -> None:
    """An `erase` followed in the same unit of work by a bookkeeping entry for a year the
    erase shreds met its own shredding as a conflict, was retried 30 times, and failed
    every command of its HTTP group: the entry now gets a new key generation."""
    old = "2015-06-01T10:00:00+02:00"
    subject = ledger.execute({**_register("gammel@example.dk"), "occurred_at": old})["subject"]
    other = ledger.execute(_register("anden@example.dk"))["subject"]
    invoice = {
        "type": "collect",
        "subject": subject,
        "category": "invoice",
        "value": {"number": "F-2015-1", "amount_dkk": "100.00"},
        "purpose": "bookkeeping",
        "legal_basis": "legal_obligation",
        "source": "system",
        "occurred_at": old,
    }
    assert ledger.execute(invoice)["ok"]
    credit = {**invoice, "value": {"number": "F-2015-2", "amount_dkk": "-100.00"}}
    for atomic in (True, False):
        results = ledger.app.execute_many(
            [
                {"type": "erase", "subject": subject},
                credit,
                {"type": "record_dialogue", "subject": other},
            ],
            atomic=atomic,
        )
        assert [r["ok"] for r in results] == [True, True, True], results
    records = sorted(
        (r for r in ledger.keystore.records(subject) if r.scope == "bookkeeping:2015"),
        key=lambda r: r.generation,
    )
    assert [r.generation for r in records] == [1, 2, 3]
    assert [r.shredded_at is None for r in records] == [False, False, True]
    view = ledger.subject(subject, reveal=True, purpose="audit of the credit note")
    invoices = {d["category"]: d["value"] for d in view["data"]}
    assert invoices["invoice"] == {"number": "F-2015-2", "amount_dkk": "-100.00"}


def test_a_save_that_crosses_the_snapshot_interval_snapshots_the_subject_as_saved(
    ledger: Ledger,
) -> None:
    """A snapshot every 50 events: one for each save whose versions reach or pass a
    multiple of 50, holding the subject at the save's last version."""
    subject = ledger.execute(_register("snap@example.dk"))["subject"]  # versions 1-2
    assert ledger.app.snapshots is not None
    dialogue = {"type": "record_dialogue", "subject": subject}

    def snapshot_versions() -> list[int]:
        assert ledger.app.snapshots is not None
        return [s.originator_version for s in ledger.app.snapshots.get(UUID(subject))]

    ledger.execute_many([dialogue] * 47)  # 3-49
    assert snapshot_versions() == []
    ledger.execute(dialogue)  # 50
    assert snapshot_versions() == [50]
    ledger.execute_many([dialogue] * 120)  # 51-170: passes 100 and 150, one snapshot
    assert snapshot_versions() == [50, 170]
