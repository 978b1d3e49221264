"""Crash safety of shredding (DESIGN 4.3): the event first, the key second, a reconciler after.

A sweep (or an erasure) runs in a child process whose `KeyStore.shred_many` is replaced,
inside that child only, by `os._exit(137)`: the process dies like a killed one after its
`ScopeShredded` events are committed and before any key is destroyed. The parent checks that
the crash left exactly that half-done state, then that the next run (`ledger sweep`, or
simply `Ledger.open`, which reconciles) destroys every key whose scope is recorded shredded.
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys

from ledger.clock import FixedClock, parse_instant
from ledger.config import Settings
from ledger.facade import Ledger
from ledger.sweepers.keys import SHREDDED_TOPIC

CA = "customer_administration"
NOW = "2025-04-01T03:00:00+02:00"

KILLED = """
import os, sys
from ledger.clock import FixedClock, parse_instant
from ledger.crypto.keystore import KeyStore
from ledger.facade import Ledger

def killed(self, items, **options):
    os._exit(137)

KeyStore.shred_many = killed
now = parse_instant(sys.argv[1])
ledger = Ledger.open(clock=FixedClock(now))
if len(sys.argv) > 2:
    ledger.execute({"type": "erase", "subject": sys.argv[2]})
else:
    ledger.sweep(now)
sys.exit(3)  # not reached: the shredding must have been attempted
"""


def run_killed(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", KILLED, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 137, (done.returncode, done.stderr[-2000:])


def shredded_kids(ledger: Ledger) -> dict[str, tuple[str, str]]:
    """Every kid named by any ScopeShredded event: kid -> (subject, scope)."""
    found: dict[str, tuple[str, str]] = {}
    for notification in ledger.notifications(topics=[SHREDDED_TOPIC]):
        event = ledger.app.mapper.to_domain_event(notification)
        state = vars(event)
        for kid in state["kids"]:
            found[kid] = (str(event.originator_id), state["scope"])
    return found


def seed(ledger: Ledger, clock: FixedClock, prospects: int = 4) -> tuple[list[str], str]:
    """Prospects due on 10 March 2025, and a customer who is never due."""
    clock.set(parse_instant(NOW))
    due = []
    for i in range(prospects):
        result = ledger.execute(
            {
                "type": "register_subject",
                "kind": "prospect",
                "purpose": CA,
                "legal_basis": "legitimate_interest",
                "identifiers": {"email": f"crash{i}@example.dk", "phone": f"+45{30000000 + i}"},
                "occurred_at": "2025-01-10T09:00:00+01:00",
            }
        )
        assert result["ok"], result
        due.append(str(result["subject"]))
    result = ledger.execute(
        {
            "type": "register_subject",
            "kind": "customer",
            "purpose": CA,
            "legal_basis": "contract",
            "identifiers": {"phone": "+4540404040"},
            "occurred_at": "2025-01-10T09:00:00+01:00",
        }
    )
    customer = str(result["subject"])
    for category, value in (("name", "Kaj Krak"), ("address", "Krakvej 1, 8000 Aarhus C")):
        result = ledger.execute(
            {
                "type": "collect",
                "subject": customer,
                "category": category,
                "value": value,
                "purpose": CA,
                "legal_basis": "contract",
                "source": "subject",
                "occurred_at": "2025-01-10T09:00:00+01:00",
            }
        )
        assert result["ok"], result
    started = ledger.execute(
        {
            "type": "start_relationship",
            "subject": customer,
            "relationship": "customer",
            "occurred_at": "2025-01-10T09:00:00+01:00",
        }
    )
    assert started["ok"], started
    invoice = {
        "type": "collect",
        "subject": customer,
        "category": "invoice",
        "value": {"number": "F-9", "amount_dkk": "99.00"},
        "purpose": "bookkeeping",
        "legal_basis": "legal_obligation",
        "source": "system",
        "occurred_at": "2025-01-20T09:00:00+01:00",
    }
    assert ledger.execute(invoice)["ok"]
    return due, customer


def assert_half_done(ledger: Ledger, subjects: list[str], scopes: set[str]) -> set[str]:
    """The crash left events saying shredded and the keys they name alive; returns them."""
    recorded = shredded_kids(ledger)
    assert {subject for subject, _ in recorded.values()} == set(subjects)
    assert {scope for _, scope in recorded.values()} == scopes
    alive = set(recorded) & ledger.keystore.live_kids()
    assert alive == set(recorded), "the child destroyed keys before it was killed"
    return alive


def assert_consistent(ledger: Ledger) -> None:
    """No key survives whose scope has a ScopeShredded event."""
    recorded = shredded_kids(ledger)
    assert recorded
    assert not set(recorded) & ledger.keystore.live_kids()
    for kid, (subject, scope) in recorded.items():
        assert ledger.keystore.key(subject, scope, kid) is None


def test_sweeper_killed_between_event_and_key_is_finished_by_the_next_run(
    ledger: Ledger, clock: FixedClock, cli_env: dict[str, str]
) -> None:
    due, customer = seed(ledger, clock)
    live_before = ledger.keystore.live_kids()
    position = ledger.max_position()

    run_killed(cli_env, NOW)

    assert ledger.max_position() == position + len(due)  # one ScopeShredded each, committed
    alive = assert_half_done(ledger, due, {"customer_data"})
    assert ledger.keystore.live_kids() == live_before  # nothing destroyed
    # Even before repair nothing recorded shredded is shown: the events rule the reads.
    view = ledger.subject(due[0], reveal=True, purpose="crash test", actor="officer")
    assert [(d["category"], d["value"], d["erased"]) for d in view["data"]] == [
        ("email", None, True),
        ("phone", None, True),
    ]

    # the next run of the sweeper finishes the job and shreds nothing twice
    out = subprocess.run(
        [sys.executable, "-m", "ledger", "sweep", "--now", NOW, "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert report["shredded"] == []
    assert_consistent(ledger)
    assert ledger.keystore.live_kids() == live_before - alive
    # the lookup index rows went with customer_data, and the customer kept everything
    assert ledger.find("email", "crash0@example.dk") == []
    assert ledger.find("phone", "+4540404040") == [customer]
    kept = ledger.subject(customer, reveal=True, purpose="crash test", actor="officer")
    assert {d["category"]: d["value"] for d in kept["data"]}["name"] == "Kaj Krak"


def test_ledger_open_reconciles_a_killed_sweep(
    ledger: Ledger, clock: FixedClock, settings: Settings, cli_env: dict[str, str]
) -> None:
    due, _ = seed(ledger, clock, prospects=3)
    run_killed(cli_env, NOW)
    assert_half_done(ledger, due, {"customer_data"})
    with Ledger.open(settings, clock=FixedClock(parse_instant(NOW))) as reopened:
        assert_consistent(reopened)
        # a second opening has nothing left to do
        assert reopened.reconcile_keys() == 0
        assert reopened.sweep(parse_instant(NOW))["shredded"] == []
    assert_consistent(ledger)


def test_erase_killed_after_its_events_are_saved(
    ledger: Ledger, clock: FixedClock, settings: Settings, cli_env: dict[str, str]
) -> None:
    _, customer = seed(ledger, clock, prospects=1)
    before = {r.kid for r in ledger.keystore.records(customer) if r.scope == "customer_data"}

    run_killed(cli_env, NOW, customer)

    erased = [e for e in ledger.history(customer) if e["type"] == "ErasureCarriedOut"]
    assert len(erased) == 1
    assert erased[0]["details"]["shredded"] == ["customer_data"]
    assert erased[0]["details"]["retained"] == [
        {"scope": "bookkeeping:2025", "reason": "legal_obligation", "until": "2031-01-01"}
    ]
    assert_half_done(ledger, [customer], {"customer_data"})
    assert before <= ledger.keystore.live_kids()

    with Ledger.open(settings, clock=FixedClock(parse_instant(NOW))) as reopened:
        assert reopened.subject(customer)["status"] == "erased"
        assert_consistent(reopened)
        assert not before & reopened.keystore.live_kids()
        assert reopened.find("phone", "+4540404040") == []
        data = {
            d["category"]: d
            for d in reopened.subject(customer, reveal=True, purpose="check", actor="officer")[
                "data"
            ]
        }
        assert data["name"]["value"] is None and data["name"]["erased"] is True
        assert data["invoice"]["value"] == {"number": "F-9", "amount_dkk": "99.00"}
    assert_consistent(ledger)


def test_a_running_process_finishes_an_erasure_a_crash_left_half_done(
    ledger: Ledger, clock: FixedClock, cli_env: dict[str, str]
) -> None:
    """A process that was already running (an HTTP server) does not wait for its next
    start or hourly sweep: its after-write work reconciles, so it stops finding the
    erased subject by phone at once (it found it until the next sweep)."""
    from ledger.cli.common import after_write

    _, customer = seed(ledger, clock, prospects=1)
    assert ledger.find("phone", "+4540404040") == [customer]
    run_killed(cli_env, NOW, customer)
    assert ledger.find("phone", "+4540404040") == [customer]  # the key is still there
    after_write(ledger)
    assert ledger.find("phone", "+4540404040") == []
    assert_consistent(ledger)
    assert ledger.reconcile_keys() == 0  # and the next run reads only what came since
