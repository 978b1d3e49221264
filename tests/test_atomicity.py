"""A rejected command writes nothing; a batch (execute_many) is all or nothing.

"Nothing" is checked where it would show: the notification log (max_position), the key
store's records and live keys, and the lookup index. SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from ledger.clock import FixedClock
from ledger.facade import Ledger

CA = "customer_administration"


def snapshot(ledger: Ledger) -> tuple[int, list[Any], set[str]]:
    records = sorted(ledger.keystore.records(), key=lambda r: r.kid)
    return ledger.max_position(), records, ledger.keystore.live_kids()


def register(subject: str | None = None, **fields: Any) -> dict[str, Any]:
    command: dict[str, Any] = {
        "type": "register_subject",
        "kind": "customer",
        "purpose": CA,
        "legal_basis": "contract",
        **fields,
    }
    if subject:
        command["subject"] = subject
    return command


def collect(subject: str, category: str, value: Any, **fields: Any) -> dict[str, Any]:
    return {
        "type": "collect",
        "subject": subject,
        "category": category,
        "value": value,
        "purpose": CA,
        "legal_basis": "contract",
        "source": "subject",
        **fields,
    }


def test_rejected_first_command_for_a_new_scope_writes_nothing(ledger: Ledger) -> None:
    subject = ledger.execute(register())["subject"]
    assert ledger.keystore.records(subject) == []
    before = snapshot(ledger)
    result = ledger.execute(collect(subject, "health", "Diabetes type 1"))
    assert result["error"]["code"] == "explicit_consent_required"
    assert snapshot(ledger) == before
    assert ledger.keystore.records(subject) == []
    # the same for a scope created and then refused inside one command
    result = ledger.execute(
        register(
            identifiers={"email": "første@example.dk", "cpr": "3102801234"},
            cpr_ground="identification",
        )
    )
    assert result["error"]["code"] == "invalid_cpr"
    assert snapshot(ledger) == before
    assert ledger.find("email", "første@example.dk") == []


def test_rejected_command_on_an_existing_subject_writes_nothing(ledger: Ledger) -> None:
    subject = ledger.execute(register(identifiers={"email": "gammel@example.dk"}))["subject"]
    ledger.execute(collect(subject, "name", "Åse Ærø"))
    before = snapshot(ledger)
    events = len(ledger.history(subject))
    rejected = [
        collect(subject, "shoe_size", "42"),
        collect(subject, "email", "not an address"),
        collect(subject, "marketing_profile", {"x": 1}, purpose="marketing", legal_basis="consent"),
        {"type": "rectify", "subject": subject, "category": "phone", "value": "+45 20 30 40 50"},
        {"type": "rectify", "subject": subject, "category": "email", "value": "no-at-sign"},
        {"type": "start_relationship", "subject": subject, "relationship": "customer"},
        {
            "type": "transfer",
            "subject": subject,
            "categories": ["orders"],
            "country": "US",
            "recipient": "Cloud Inc",
        },
        {
            "type": "process",
            "subject": subject,
            "purpose": "marketing",
            "activity": "sms",
            "channel": "sms",
        },
    ]
    for command in rejected:
        result = ledger.execute(command)
        assert result["ok"] is False, command
        assert snapshot(ledger) == before, command
    assert len(ledger.history(subject)) == events
    assert ledger.find("email", "gammel@example.dk") == [subject]


def test_batch_with_third_of_four_rejected_writes_nothing(ledger: Ledger) -> None:
    known = ledger.execute(register(identifiers={"email": "kendt@example.dk"}))["subject"]
    new = str(uuid.uuid4())
    before = snapshot(ledger)
    batch = [
        register(new, identifiers={"email": "ny@example.dk", "phone": "+45 20 30 40 50"}),
        collect(new, "name", "Bjørn Ærø"),
        collect(new, "health", "Hjertesvigt"),  # no explicit consent
        {"type": "rectify", "subject": known, "category": "email", "value": "ændret@example.dk"},
    ]
    results = ledger.execute_many(batch)
    assert len(results) == 4
    assert results[2] == {
        "ok": False,
        "error": {"code": "explicit_consent_required", "message": results[2]["error"]["message"]},
    }
    assert "Hjertesvigt" not in results[2]["error"]["message"]
    for index in (0, 1, 3):
        assert results[index]["ok"] is False
        assert results[index]["rolled_back"] is True
        assert "3" in results[index]["error"]["message"]
    assert snapshot(ledger) == before
    assert not ledger.app.subject_exists(new)
    assert ledger.find("email", "ny@example.dk") == []
    assert ledger.find("email", "kendt@example.dk") == [known]
    assert ledger.find("email", "ændret@example.dk") == []


def test_batch_with_an_invalid_command_says_which(ledger: Ledger) -> None:
    subject = ledger.execute(register())["subject"]
    before = snapshot(ledger)
    results = ledger.execute_many(
        [
            collect(subject, "name", "Åse"),
            {"type": "record_dialogue", "subject": subject},
            {"type": "collect", "subject": subject, "value": "no category"},
            {"type": "record_dialogue", "subject": subject},
        ]
    )
    assert "rolled_back" not in results[2]
    assert results[2]["error"]["code"] == "invalid_command"
    assert [r.get("rolled_back") for r in results] == [True, True, None, True]
    assert snapshot(ledger) == before


def test_batch_all_ok_writes_everything_in_one_go(ledger: Ledger) -> None:
    new = str(uuid.uuid4())
    before = snapshot(ledger)
    results = ledger.execute_many(
        [
            register(new, identifiers={"email": "alle@example.dk"}),
            collect(new, "name", "Ærlige Åge"),
            collect(new, "address", "Østergade 1, 1100 København K"),
            collect(new, "phone", "+45 20 30 40 50"),
            {"type": "start_relationship", "subject": new, "relationship": "customer"},
            collect(
                new,
                "invoice",
                {"number": "F-77123", "amount_dkk": "1234.50"},
                purpose="bookkeeping",
                legal_basis="legal_obligation",
                source="system",
            ),
        ]
    )
    assert results[0] == {"ok": True, "subject": new}
    assert all(r == {"ok": True} for r in results[1:])
    history = ledger.history(new)
    # registration + e-mail, name, address, phone, relationship, invoice
    assert len(history) == 7
    assert [e["version"] for e in history] == list(range(1, 8))
    assert ledger.max_position() == before[0] + 7
    notifications = list(ledger.notifications(start=before[0] + 1))
    assert [n.id for n in notifications] == list(range(before[0] + 1, before[0] + 8))
    assert {str(n.originator_id) for n in notifications} == {new}
    scopes = sorted(r.scope for r in ledger.keystore.records(new))
    assert scopes == ["bookkeeping:2026", "customer_data"]
    assert ledger.find("email", "alle@example.dk") == [new]
    view = ledger.subject(new, reveal=True, purpose="test")
    assert len(view["data"]) == 5


def test_batch_over_several_subjects_is_one_unit(ledger: Ledger) -> None:
    first = ledger.execute(register())["subject"]
    second = ledger.execute(register())["subject"]
    before = snapshot(ledger)
    results = ledger.execute_many(
        [
            collect(first, "name", "Første Ærø"),
            collect(second, "name", "Anden Ærø"),
            {"type": "erase", "subject": first},
            collect(first, "orders", ["ovn"]),  # after erasure in the same batch
        ]
    )
    assert results[3]["error"]["code"] == "subject_erased"
    assert snapshot(ledger) == before
    assert ledger.subject(first)["status"] == "active"
    assert ledger.subject(first)["data"] == []
    assert ledger.subject(second)["data"] == []


def test_erase_in_a_batch_that_is_rolled_back_destroys_no_key(ledger: Ledger) -> None:
    subject = ledger.execute(register(identifiers={"phone": "+45 31 32 33 34"}))["subject"]
    live = {r.kid for r in ledger.keystore.records(subject)}
    before = snapshot(ledger)
    results = ledger.execute_many(
        [{"type": "erase", "subject": subject}, collect(str(uuid.uuid4()), "name", "Ingen")]
    )
    assert results[1]["error"]["code"] == "unknown_subject"
    assert snapshot(ledger) == before
    assert live <= ledger.keystore.live_kids()
    view = ledger.subject(subject, reveal=True, purpose="test")
    assert [d["value"] for d in view["data"]] == ["+45 31 32 33 34"]


def test_group_commit_writes_no_key_for_a_rejected_command(ledger: Ledger) -> None:
    """A group (the HTTP server's commit of several callers' commands, `atomic=False`)
    writes the accepted commands; a rejected one leaves no key behind, even one it made
    before the rule that refused it, and the same scope's key is made afresh after."""
    refused = str(uuid.uuid4())
    accepted = str(uuid.uuid4())
    before = snapshot(ledger)
    results = ledger.app.execute_many(
        [
            # the e-mail is sealed before the phone is found not to be allowed
            register(
                refused,
                kind="prospect",
                purpose="digital_services",
                legal_basis="legitimate_interest",
                identifiers={"email": "afvist@example.dk", "phone": "+4511112222"},
            ),
            register(accepted, identifiers={"email": "godkendt@example.dk"}),
            collect(accepted, "name", "Godkendt Kunde"),
        ],
        atomic=False,
    )
    assert results[0]["error"]["code"] == "purpose_not_allowed"
    assert [r["ok"] for r in results] == [False, True, True]
    assert ledger.keystore.records(refused) == []
    assert ledger.find("email", "afvist@example.dk") == []
    assert [r.scope for r in ledger.keystore.records(accepted)] == ["customer_data"]
    assert ledger.max_position() == before[0] + 3
    # nothing at all when every command of a group is refused
    before = snapshot(ledger)
    results = ledger.app.execute_many(
        [
            register(
                kind="prospect",
                purpose="digital_services",
                legal_basis="legitimate_interest",
                identifiers={"email": "igen@example.dk", "phone": "+4522223333"},
            )
        ],
        atomic=False,
    )
    assert results[0]["error"]["code"] == "purpose_not_allowed"
    assert snapshot(ledger) == before


def test_a_batch_happens_at_one_moment(ledger: Ledger, clock: FixedClock) -> None:
    """Commands without `occurred_at` happen when their unit of work runs: all of a
    batch's events carry its one moment (as a database transaction has one time), and a
    command that gives its own time keeps it."""
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    results = ledger.execute_many(
        [
            register(first),
            collect(first, "name", "Første Ærø"),
            register(second),
            collect(second, "name", "Anden Ærø", occurred_at="2026-01-05T09:30:00+01:00"),
            collect(second, "phone", "+45 20 30 40 50"),
        ]
    )
    assert all(r["ok"] for r in results), results
    moments = [e["occurred_at"] for s in (first, second) for e in ledger.history(s)]
    assert moments[3] == "2026-01-05T09:30:00+01:00"
    batch_moment = moments[0]
    assert moments[:3] + moments[4:] == [batch_moment] * 4
    assert batch_moment == clock.now().isoformat()
    clock.set(clock.now() + timedelta(seconds=1))
    ledger.execute(collect(first, "address", "Østergade 1, 1100 København K"))
    assert ledger.history(first)[-1]["occurred_at"] == clock.now().isoformat()
