"""No value is shown whose key's shredding has returned (DESIGN 4.3), even when the erasure
lands while a reveal is under way: a reveal once read the keys, then caught the read
models up (seconds, with a backlog), then opened the values with the keys it had read,
after another process's erasure had returned. Now the keys are read when the first value
is opened, and a key destroyed before the answer is complete means it is built again."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.crypto.sealing import unseal
from ledger.facade import Ledger
from ledger.projections import views

CA = "customer_administration"


def _customer(ledger: Ledger) -> str:
    subject = str(
        ledger.execute(
            {
                "type": "register_subject",
                "kind": "customer",
                "purpose": CA,
                "legal_basis": "contract",
                "identifiers": {"email": "anne@example.dk"},
            }
        )["subject"]
    )
    named = ledger.execute(
        {
            "type": "collect",
            "subject": subject,
            "category": "name",
            "value": "Anne Hansen",
            "purpose": CA,
            "legal_basis": "contract",
            "source": "subject",
        }
    )
    assert named["ok"], named
    return subject


def _erase_while_opening(other: Ledger, subject: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first time a value is opened (rows and keys read already), another process
    erases the subject and its shredding returns; the value is then opened all the same."""
    opened: list[str] = []

    def erase_then_open(key: bytes, sealed: Any, *, subject: str, category: str) -> Any:
        if not opened:
            erased = other.execute({"type": "erase", "subject": subject})
            assert erased["ok"] and "customer_data" in erased["shredded"], erased
        opened.append(category)
        return unseal(key, sealed, subject=subject, category=category)

    monkeypatch.setattr(views, "unseal", erase_then_open)
    return opened


def test_a_reveal_shows_nothing_whose_shredding_returned(
    ledger: Ledger, settings: Settings, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = _customer(ledger)
    with Ledger.open(settings, clock=clock) as other:
        opened = _erase_while_opening(other, subject, monkeypatch)
        view: dict[str, Any] = ledger.subject(subject, reveal=True, purpose="phone call")
    assert opened  # a value was opened while the erasure ran, and then not shown
    values = {d["category"]: (d["value"], d["erased"]) for d in view["data"]}
    assert values == {"email": (None, True), "name": (None, True)}
    assert view["status"] == "erased"


def test_an_export_shows_nothing_whose_shredding_returned(
    ledger: Ledger, settings: Settings, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = _customer(ledger)
    with Ledger.open(settings, clock=clock) as other:
        _erase_while_opening(other, subject, monkeypatch)
        report = ledger.export(subject, actor="dpo")
    assert "Anne Hansen" not in str(report) and "anne@example.dk" not in str(report)
