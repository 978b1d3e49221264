"""Retention (R15, DESIGN 4.2): the sweeper, legal holds, erasure and key generations.

For every retention class a subject's scope is kept the day before its deadline and
shredded on it, which is checked through a recorded reveal (value null, `erased` true) and
in the key store (no live key for the scope's kids). Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

import pytest

from ledger.clock import COPENHAGEN, FixedClock, parse_instant
from ledger.facade import Ledger
from ledger.reports import produce

CA = "customer_administration"
PURPOSE = "retention test"


def at(text: str) -> datetime:
    return parse_instant(text)


def start_of(day: date) -> datetime:
    return datetime.combine(day, time(0, 0), COPENHAGEN)


def end_of(day: date) -> datetime:
    return datetime.combine(day, time(23, 59, 59), COPENHAGEN)


class World:
    """The ledger with its clock: each command happens at the time it names."""

    def __init__(self, ledger: Ledger, clock: FixedClock) -> None:
        self.ledger = ledger
        self.clock = clock

    def do(self, when: str, command: dict[str, Any]) -> dict[str, Any]:
        moment = at(when)
        if moment > self.clock.now():
            self.clock.set(moment)
        result = self.ledger.execute({**command, "occurred_at": when})
        assert result.get("ok") is True, (command["type"], result)
        return result

    def fails(self, when: str, command: dict[str, Any]) -> str:
        moment = at(when)
        if moment > self.clock.now():
            self.clock.set(moment)
        before = self.ledger.max_position()
        result = self.ledger.execute({**command, "occurred_at": when})
        assert result["ok"] is False, (command["type"], result)
        assert self.ledger.max_position() == before
        return str(result["error"]["code"])

    def sweep(self, moment: datetime, **options: Any) -> dict[str, Any]:
        if moment > self.clock.now():
            self.clock.set(moment)
        report = self.ledger.sweep(moment, **options)
        assert report["ok"] is True
        return report

    def data(self, subject: str) -> dict[str, dict[str, Any]]:
        view = self.ledger.subject(subject, reveal=True, purpose=PURPOSE, actor="officer")
        return {item["category"]: item for item in view["data"]}

    def retention(self, subject: str) -> dict[str, dict[str, Any]]:
        return {r["scope"]: r for r in self.ledger.subject(subject)["retention"]}

    def keys(self, subject: str, scope: str) -> list[Any]:
        records = [r for r in self.ledger.keystore.records(subject) if r.scope == scope]
        return sorted(records, key=lambda r: r.generation)

    def assert_kept(self, subject: str, scope: str, values: dict[str, Any]) -> None:
        data = self.data(subject)
        for category, value in values.items():
            assert data[category]["value"] == value, category
            assert data[category]["erased"] is False
            assert data[category]["scope"] == scope
        records = self.keys(subject, scope)
        assert records, f"no key for {scope}"
        live = self.ledger.keystore.live_kids()
        assert records[-1].shredded_at is None
        assert records[-1].kid in live
        assert self.retention(subject)[scope]["shredded_at"] is None

    def assert_shredded(self, subject: str, scope: str, categories: list[str]) -> None:
        data = self.data(subject)
        for category in categories:
            assert data[category]["value"] is None, category
            assert data[category]["erased"] is True, category
            assert data[category]["scope"] == scope
        records = self.keys(subject, scope)
        assert records, f"no key was ever made for {scope}"
        live = self.ledger.keystore.live_kids()
        for record in records:
            assert record.shredded_at is not None
            assert record.kid not in live
            assert self.ledger.keystore.key(subject, scope, record.kid) is None
        assert self.retention(subject)[scope]["shredded_at"] is not None


@pytest.fixture
def world(ledger: Ledger, clock: FixedClock) -> World:
    clock.set(at("2019-01-01T00:00:00+01:00"))
    return World(ledger, clock)


def register(w: World, when: str, kind: str = "customer", **identifiers: str) -> str:
    command: dict[str, Any] = {
        "type": "register_subject",
        "kind": kind,
        "purpose": CA,
        "legal_basis": "contract" if kind == "customer" else "legitimate_interest",
    }
    if identifiers:
        command["identifiers"] = identifiers
    return str(w.do(when, command)["subject"])


def collect(
    subject: str,
    category: str,
    value: Any,
    purpose: str = CA,
    legal_basis: str = "contract",
    source: str = "subject",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": "collect",
        "subject": subject,
        "category": category,
        "value": value,
        "purpose": purpose,
        "legal_basis": legal_basis,
        "source": source,
        **extra,
    }


def customer(w: World, when: str, name: str = "Søren Kierkegaard") -> str:
    """A customer with name, address and phone, whose relationship starts at `when`."""
    subject = register(w, when, phone="+4511223344")
    w.do(when, collect(subject, "name", name))
    w.do(when, collect(subject, "address", "Nytorv 2, 1450 København K"))
    w.do(when, {"type": "start_relationship", "subject": subject, "relationship": "customer"})
    return subject


def end(subject: str) -> dict[str, Any]:
    return {"type": "end_relationship", "subject": subject, "relationship": "customer"}


def place_hold(subject: str, reason: str = "tvist") -> dict[str, Any]:
    return {"type": "place_legal_hold", "subject": subject, "reason": reason}


def billed(number: str, amount: str = "499.00") -> dict[str, Any]:
    """The invoice value as collected (and as a reveal must show it)."""
    return {"invoice": {"number": number, "amount_dkk": amount}}


def invoice(subject: str, number: str) -> dict[str, Any]:
    return collect(
        subject,
        "invoice",
        {"number": number, "amount_dkk": "499.00"},
        purpose="bookkeeping",
        legal_basis="legal_obligation",
        source="system",
    )


def shredded_scopes(report: dict[str, Any], subject: str) -> dict[str, str]:
    return {s["scope"]: s["deadline"] for s in report["shredded"] if s["subject"] == subject}


# -- every class: kept the day before its deadline, shredded on it --------------------------


@dataclass
class Case:
    subject: str
    scope: str
    deadline: date
    values: dict[str, Any]
    # other scopes of the same subject that must outlive this deadline
    still_kept: dict[str, dict[str, Any]] = field(default_factory=dict)


def prospect_case(w: World) -> Case:
    """customer_data of a prospect: 2 months after the last dialogue (or the registration)."""
    subject = register(w, "2025-01-10T09:00:00+01:00", kind="prospect", email="p@example.dk")
    w.do("2025-02-20T15:00:00+01:00", {"type": "record_dialogue", "subject": subject})
    return Case(subject, "customer_data", date(2025, 4, 20), {"email": "p@example.dk"})


def prospect_gave_data_case(w: World) -> Case:
    """Data a prospect gives us is contact too: 2 months after it came (it was once due
    the day after it was collected, 2 months after the registration)."""
    subject = register(w, "2025-01-10T09:00:00+01:00", kind="prospect", email="p@example.dk")
    w.do("2025-02-20T15:00:00+01:00", {"type": "record_dialogue", "subject": subject})
    w.do(
        "2025-04-01T10:00:00+02:00",
        collect(subject, "name", "Karen Blixen", legal_basis="legitimate_interest"),
    )
    # data about them from elsewhere is no contact from them
    w.do(
        "2025-04-15T10:00:00+02:00",
        collect(
            subject,
            "digital_behaviour",
            {"visits": 3},
            purpose="digital_services",
            legal_basis="legitimate_interest",
            source="observed",
        ),
    )
    return Case(
        subject,
        "customer_data",
        date(2025, 6, 1),
        {"name": "Karen Blixen", "email": "p@example.dk"},
    )


def competition_entrant_case(w: World) -> Case:
    """An entrant's contact details: 2 months after the competition ended (entering it is
    contact that lasts until then; they were once shredded 2 months after the entry, before
    the draw). The entry itself is kept a year after the end (policy §7)."""
    subject = register(
        w, "2025-05-01T10:00:00+02:00", kind="competition_entrant", email="vinder@example.dk"
    )
    w.do(
        "2025-05-01T10:00:00+02:00",
        {
            "type": "give_consent",
            "subject": subject,
            "purpose": "competition",
            "notice_version": "2018-05-25",
            "method": "web_form",
        },
    )
    w.do(
        "2025-05-01T10:00:00+02:00",
        {
            "type": "enter_competition",
            "subject": subject,
            "competition": "efterår-2025",
            "competition_ends_on": "2025-09-30",
        },
    )
    w.do(
        "2025-05-01T10:05:00+02:00",
        collect(
            subject,
            "competition_entry",
            {"answer": "solfanger"},
            purpose="competition",
            legal_basis="consent",
            competition="efterår-2025",
        ),
    )
    return Case(
        subject,
        "customer_data",
        date(2025, 11, 30),
        {"email": "vinder@example.dk"},
        still_kept={"competition:efterår-2025": {"competition_entry": {"answer": "solfanger"}}},
    )


def former_customer_case(w: World) -> Case:
    """customer_data of a former customer: 2 months after the end, at a month's end."""
    subject = customer(w, "2023-05-01T10:00:00+02:00")
    w.do("2024-06-01T10:00:00+02:00", {"type": "record_dialogue", "subject": subject})
    w.do("2024-12-31T16:00:00+01:00", end(subject))
    # 31 December + 2 months: February has no 31st, so its last day
    return Case(
        subject,
        "customer_data",
        date(2025, 2, 28),
        {"name": "Søren Kierkegaard", "phone": "+4511223344"},
    )


def call_recording_case(w: World) -> Case:
    """call_recording: 2 months after the relationship ended; a later dialogue moves only
    customer_data (policy §7: recordings are kept up to 2 months after the termination)."""
    subject = customer(w, "2024-01-10T09:00:00+01:00")
    w.do(
        "2024-09-01T10:00:00+02:00",
        collect(
            subject,
            "call_recording",
            "recordings/2024-09-01/call-77.ogg",
            purpose="call_documentation",
            legal_basis="legitimate_interest",
            source="observed",
        ),
    )
    w.do("2025-03-31T12:00:00+02:00", end(subject))
    w.do("2025-04-15T12:00:00+02:00", {"type": "record_dialogue", "subject": subject})
    return Case(
        subject,
        "call_recording",
        date(2025, 5, 31),
        {"call_recording": "recordings/2024-09-01/call-77.ogg"},
        still_kept={"customer_data": {"name": "Søren Kierkegaard"}},  # until 15 June
    )


def marketing_case(w: World) -> Case:
    """marketing: 1 year after the newest registration (29 February: 28 February)."""
    subject = customer(w, "2023-10-01T10:00:00+02:00")
    w.do(
        "2023-10-01T10:00:00+02:00",
        {
            "type": "give_consent",
            "subject": subject,
            "purpose": "marketing",
            "notice_version": "2018-05-25",
            "method": "web_form",
            "channels": ["email"],
        },
    )
    profile = collect(
        subject,
        "marketing_profile",
        {"segment": "A"},
        purpose="marketing",
        legal_basis="consent",
        source="observed",
    )
    w.do("2023-11-01T10:00:00+01:00", profile)
    w.do("2024-02-29T10:00:00+01:00", {**profile, "value": {"segment": "B"}})
    return Case(
        subject,
        "marketing",
        date(2025, 2, 28),
        {"marketing_profile": {"segment": "B"}},
        # a customer still: customer_data has no deadline at all
        still_kept={"customer_data": {"name": "Søren Kierkegaard"}},
    )


def competition_case(w: World) -> Case:
    """competition:<id>: 1 year after that competition ended; each competition on its own."""
    subject = register(w, "2025-05-01T10:00:00+02:00", kind="competition_entrant")
    w.do(
        "2025-05-01T10:00:00+02:00",
        {
            "type": "give_consent",
            "subject": subject,
            "purpose": "competition",
            "notice_version": "2018-05-25",
            "method": "web_form",
        },
    )
    for competition, ends in (("sommer-2025", "2025-06-30"), ("jul-2025", "2025-12-24")):
        w.do(
            "2025-05-02T10:00:00+02:00",
            {
                "type": "enter_competition",
                "subject": subject,
                "competition": competition,
                "competition_ends_on": ends,
            },
        )
    entry = collect(
        subject,
        "competition_entry",
        {"answer": "vindmølle"},
        purpose="competition",
        legal_basis="consent",
        competition="sommer-2025",
    )
    # (the view shows the newest value of a category, so the one under test comes last)
    w.do("2025-05-02T11:00:00+02:00", {**entry, "competition": "jul-2025", "value": "nisse"})
    w.do("2025-05-03T10:00:00+02:00", entry)
    return Case(
        subject,
        "competition:sommer-2025",
        date(2026, 6, 30),
        {"competition_entry": {"answer": "vindmølle"}},
        still_kept={"competition:jul-2025": {}},  # until 24 December 2026
    )


def bookkeeping_case(w: World) -> Case:
    """bookkeeping:<year>: 5 years after the end of the financial year, even for a customer:
    kept through 31 December 2029 and due on New Year's Day 2030."""
    subject = customer(w, "2024-01-10T09:00:00+01:00")
    w.do("2024-06-15T12:00:00+02:00", invoice(subject, "F-1001"))
    # 00:30 on New Year's Day in Copenhagen: the next financial year
    w.do("2024-12-31T23:30:00+00:00", {**invoice(subject, "F-1002"), "category": "payment_record"})
    return Case(
        subject,
        "bookkeeping:2024",
        date(2030, 1, 1),
        {"invoice": {"number": "F-1001", "amount_dkk": "499.00"}},
        still_kept={
            "bookkeeping:2025": {"payment_record": {"number": "F-1002", "amount_dkk": "499.00"}},
            "customer_data": {"name": "Søren Kierkegaard"},
        },
    )


CASES: dict[str, Callable[[World], Case]] = {
    "customer_data-prospect": prospect_case,
    "customer_data-prospect-gave-data": prospect_gave_data_case,
    "customer_data-competition-entrant": competition_entrant_case,
    "customer_data-former-customer": former_customer_case,
    "call_recording": call_recording_case,
    "marketing": marketing_case,
    "competition": competition_case,
    "bookkeeping": bookkeeping_case,
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_every_class_is_kept_until_its_deadline_and_shredded_on_it(world: World, case: str) -> None:
    made = CASES[case](world)
    subject, scope = made.subject, made.scope
    assert world.retention(subject)[scope]["deadline"] == made.deadline.isoformat()

    day_before = world.sweep(end_of(made.deadline - timedelta(days=1)))
    assert scope not in shredded_scopes(day_before, subject)
    world.assert_kept(subject, scope, made.values)

    on_the_day = world.sweep(start_of(made.deadline))
    assert shredded_scopes(on_the_day, subject) == {scope: made.deadline.isoformat()}
    world.assert_shredded(subject, scope, list(made.values))
    for other, values in made.still_kept.items():
        world.assert_kept(subject, other, values)

    shredding = [e for e in world.ledger.history(subject) if e["type"] == "ScopeShredded"]
    assert len(shredding) == 1
    assert shredding[0]["details"]["scope"] == scope
    assert shredding[0]["details"]["reason"] == "retention"
    assert shredding[0]["details"]["deadline"] == made.deadline.isoformat()
    assert shredding[0]["details"]["kids"] == [r.kid for r in world.keys(subject, scope)]
    assert shredding[0]["actor"] == "retention-sweeper"
    assert world.ledger.subject(subject)["status"] == "partially_erased"

    # and after it: nothing more for this scope, ever
    later = world.sweep(start_of(made.deadline + timedelta(days=400)))
    assert scope not in shredded_scopes(later, subject)


def test_prospect_lookup_rows_go_with_customer_data(world: World) -> None:
    made = prospect_case(world)
    assert world.ledger.find("email", "P@example.dk ") == [made.subject]
    world.sweep(start_of(made.deadline))
    assert world.ledger.find("email", "p@example.dk") == []


def test_an_active_relationship_keeps_customer_data_and_recordings(world: World) -> None:
    subject = customer(world, "2019-02-01T10:00:00+01:00")
    world.do(
        "2019-03-01T10:00:00+01:00",
        collect(
            subject,
            "call_recording",
            "call-1.ogg",
            purpose="call_documentation",
            legal_basis="legitimate_interest",
            source="observed",
        ),
    )
    world.do("2019-04-01T10:00:00+02:00", {"type": "record_dialogue", "subject": subject})
    retention = world.retention(subject)
    assert retention["customer_data"]["deadline"] is None
    assert retention["call_recording"]["deadline"] is None
    report = world.sweep(at("2045-01-01T00:00:00+01:00"))
    assert shredded_scopes(report, subject) == {}
    world.assert_kept(subject, "customer_data", {"name": "Søren Kierkegaard"})
    world.assert_kept(subject, "call_recording", {"call_recording": "call-1.ogg"})


# -- legal holds ------------------------------------------------------------------------------


def test_a_hold_placed_before_the_deadline_keeps_everything_until_released(world: World) -> None:
    subject = register(world, "2025-01-10T09:00:00+01:00", kind="prospect", email="h@example.dk")
    world.do("2018-06-15T12:00:00+02:00", invoice(subject, "F-18"))  # a late report: due 2023
    world.do(
        "2025-01-10T09:00:00+01:00",
        collect(subject, "name", "Hanne Hold", legal_basis="legitimate_interest"),
    )
    hold = world.do("2025-03-01T10:00:00+01:00", place_hold(subject))["hold"]
    assert world.retention(subject)["customer_data"]["deadline"] == "2025-03-10"
    assert world.retention(subject)["customer_data"]["held"] is True

    for moment in ("2025-03-10T00:00:00+01:00", "2026-06-01T00:00:00+02:00"):
        assert shredded_scopes(world.sweep(at(moment)), subject) == {}
    world.assert_kept(subject, "customer_data", {"email": "h@example.dk", "name": "Hanne Hold"})
    world.assert_kept(subject, "bookkeeping:2018", billed("F-18"))
    # an erasure now keeps everything too, and says why
    erased = world.do("2026-06-02T10:00:00+02:00", {"type": "erase", "subject": subject})
    assert erased["shredded"] == []
    assert sorted(erased["retained"], key=lambda r: str(r["scope"])) == [
        {"scope": "bookkeeping:2018", "reason": "legal_hold", "until": None},
        {"scope": "customer_data", "reason": "legal_hold", "until": None},
    ]
    world.assert_kept(subject, "customer_data", {"name": "Hanne Hold"})

    world.do(
        "2026-07-01T10:00:00+02:00",
        {"type": "release_legal_hold", "subject": subject, "hold": hold},
    )
    assert world.retention(subject)["customer_data"]["held"] is False
    report = world.sweep(at("2026-07-01T10:00:01+02:00"))
    assert shredded_scopes(report, subject) == {
        "customer_data": "2025-03-10",
        "bookkeeping:2018": "2024-01-01",
    }
    world.assert_shredded(subject, "customer_data", ["email", "name"])
    world.assert_shredded(subject, "bookkeeping:2018", ["invoice"])


def test_a_hold_released_before_the_deadline_changes_nothing(world: World) -> None:
    subject = register(world, "2025-01-10T09:00:00+01:00", kind="prospect", email="r@example.dk")
    hold = world.do("2025-02-01T10:00:00+01:00", place_hold(subject))["hold"]
    world.do(
        "2025-02-15T10:00:00+01:00",
        {"type": "release_legal_hold", "subject": subject, "hold": hold},
    )
    assert shredded_scopes(world.sweep(end_of(date(2025, 3, 9))), subject) == {}
    report = world.sweep(start_of(date(2025, 3, 10)))
    assert shredded_scopes(report, subject) == {"customer_data": "2025-03-10"}
    world.assert_shredded(subject, "customer_data", ["email"])


# -- a returning customer ---------------------------------------------------------------------


def test_a_returning_customer_gets_a_fresh_key_generation(world: World) -> None:
    subject = customer(world, "2023-01-10T09:00:00+01:00", name="Gammelt Navn")
    world.do("2023-01-10T09:00:00+01:00", collect(subject, "email", "gammel@example.dk"))
    world.do("2024-12-31T12:00:00+01:00", end(subject))
    first = world.keys(subject, "customer_data")
    assert [r.generation for r in first] == [1]
    old_kid = first[0].kid
    world.sweep(start_of(date(2025, 2, 28)))
    world.assert_shredded(subject, "customer_data", ["name", "address", "phone", "email"])

    # back as a customer: new data, so a new generation of the customer_data key
    when = "2025-06-01T10:00:00+02:00"
    world.do(when, collect(subject, "name", "Nyt Navn"))
    world.do(when, collect(subject, "address", "Vesterbrogade 1, 1620 København V"))
    world.do(when, collect(subject, "phone", "+4599887766"))
    world.do(when, {"type": "start_relationship", "subject": subject, "relationship": "customer"})
    records = world.keys(subject, "customer_data")
    assert [r.generation for r in records] == [1, 2]
    assert records[0].kid == old_kid and records[0].shredded_at is not None
    new_kid = records[1].kid
    assert new_kid != old_kid and records[1].shredded_at is None
    assert world.ledger.keystore.key(subject, "customer_data", old_kid) is None

    sealed = [e["sealed"] for e in world.ledger.history(subject) if "sealed" in e]
    assert {s["kid"] for s in sealed if s["scope"] == "customer_data"} == {old_kid, new_kid}
    data = world.data(subject)
    assert data["name"]["value"] == "Nyt Navn" and data["name"]["erased"] is False
    assert data["phone"]["value"] == "+4599887766"
    # what was not collected again stays unreadable: the old generation is gone
    assert data["email"]["value"] is None and data["email"]["erased"] is True
    assert world.ledger.find("phone", "+45 99 88 77 66") == [subject]
    assert world.ledger.find("email", "gammel@example.dk") == []

    # a customer again: no deadline; after the second ending only the new kid is shredded
    assert world.retention(subject)["customer_data"]["deadline"] is None
    assert shredded_scopes(world.sweep(at("2030-01-01T00:00:00+01:00")), subject) == {}
    world.do("2030-01-15T10:00:00+01:00", end(subject))
    report = world.sweep(start_of(date(2030, 3, 15)))
    assert shredded_scopes(report, subject) == {"customer_data": "2030-03-15"}
    last = [e for e in world.ledger.history(subject) if e["type"] == "ScopeShredded"][-1]
    assert last["details"]["kids"] == [new_kid]
    world.assert_shredded(subject, "customer_data", ["name", "phone"])


# -- erasure ------------------------------------------------------------------------------------


def test_bookkeeping_outlives_an_erasure_until_its_own_deadline(world: World) -> None:
    subject = customer(world, "2024-01-10T09:00:00+01:00")
    world.do("2018-03-01T10:00:00+01:00", invoice(subject, "F-0"))  # its deadline has passed
    world.do("2024-06-15T12:00:00+02:00", invoice(subject, "F-1001"))
    world.do(
        "2024-09-01T10:00:00+02:00",
        collect(
            subject,
            "call_recording",
            "call-9.ogg",
            purpose="call_documentation",
            legal_basis="legitimate_interest",
            source="observed",
        ),
    )
    world.do("2025-01-31T12:00:00+01:00", end(subject))
    request = world.do(
        "2025-02-03T09:00:00+01:00",
        {"type": "open_request", "subject": subject, "right": "erasure"},
    )["request"]
    erased = world.do(
        "2025-02-04T09:00:00+01:00", {"type": "erase", "subject": subject, "request": request}
    )
    assert sorted(erased["shredded"]) == ["bookkeeping:2018", "call_recording", "customer_data"]
    assert erased["retained"] == [
        {"scope": "bookkeeping:2024", "reason": "legal_obligation", "until": "2030-01-01"}
    ]
    view = world.ledger.subject(subject)
    assert view["status"] == "erased"
    world.assert_shredded(subject, "customer_data", ["name", "address", "phone"])
    world.assert_shredded(subject, "call_recording", ["call_recording"])
    world.assert_kept(subject, "bookkeeping:2024", billed("F-1001"))
    reasons = {
        e["details"]["scope"]: e["details"]["reason"]
        for e in world.ledger.history(subject)
        if e["type"] == "ScopeShredded"
    }
    assert reasons == {
        "bookkeeping:2018": "erasure",
        "call_recording": "erasure",
        "customer_data": "erasure",
    }

    # kept through the last day of the fifth year after 2024 (bogføringsloven)
    assert shredded_scopes(world.sweep(end_of(date(2029, 12, 31))), subject) == {}
    world.assert_kept(subject, "bookkeeping:2024", billed("F-1001"))
    report = world.sweep(start_of(date(2030, 1, 1)))
    assert shredded_scopes(report, subject) == {"bookkeeping:2024": "2030-01-01"}
    world.assert_shredded(subject, "bookkeeping:2024", ["invoice"])
    assert world.ledger.subject(subject)["status"] == "erased"


def test_after_erasure_only_bookkeeping_may_be_collected(world: World) -> None:
    subject = customer(world, "2024-01-10T09:00:00+01:00")
    world.do("2024-06-15T12:00:00+02:00", invoice(subject, "F-1"))
    world.do("2025-02-04T09:00:00+01:00", {"type": "erase", "subject": subject})
    when = "2025-02-05T09:00:00+01:00"
    assert world.fails(when, collect(subject, "name", "Igen")) == "subject_erased"
    assert (
        world.fails(
            when,
            collect(
                subject, "orders", ["ovn"], legal_basis="legitimate_interest", source="observed"
            ),
        )
        == "subject_erased"
    )
    assert world.fails(when, collect(subject, "email", "igen@example.dk")) == "subject_erased"
    world.do(when, {**invoice(subject, "F-2"), "value": {"number": "F-2", "amount_dkk": "-499"}})
    world.assert_kept(subject, "bookkeeping:2025", billed("F-2", "-499"))


def test_erasure_of_a_held_subject_keeps_all_and_can_be_repeated_after_release(
    world: World,
) -> None:
    subject = customer(world, "2024-01-10T09:00:00+01:00")
    world.do("2024-06-15T12:00:00+02:00", invoice(subject, "F-1"))
    hold = world.do(
        "2025-01-05T10:00:00+01:00",
        {"type": "place_legal_hold", "subject": subject, "reason": "Datatilsynet"},
    )["hold"]
    erased = world.do("2025-01-06T10:00:00+01:00", {"type": "erase", "subject": subject})
    assert erased["shredded"] == []
    assert sorted(erased["retained"], key=lambda r: str(r["scope"])) == [
        {"scope": "bookkeeping:2024", "reason": "legal_hold", "until": None},
        {"scope": "customer_data", "reason": "legal_hold", "until": None},
    ]
    assert world.ledger.keystore.live_kids() >= {
        r.kid for r in world.keys(subject, "customer_data")
    }
    world.assert_kept(subject, "customer_data", {"name": "Søren Kierkegaard"})
    world.do(
        "2025-03-01T10:00:00+01:00",
        {"type": "release_legal_hold", "subject": subject, "hold": hold},
    )
    again = world.do("2025-03-01T11:00:00+01:00", {"type": "erase", "subject": subject})
    assert again["shredded"] == ["customer_data"]
    assert again["retained"] == [
        {"scope": "bookkeeping:2024", "reason": "legal_obligation", "until": "2030-01-01"}
    ]
    world.assert_shredded(subject, "customer_data", ["name", "address", "phone"])


def test_the_sweeper_finishes_an_erasure_once_its_hold_is_released(world: World) -> None:
    subject = customer(world, "2024-01-10T09:00:00+01:00")
    world.do("2024-06-15T12:00:00+02:00", invoice(subject, "F-2"))
    hold = world.do("2025-01-05T10:00:00+01:00", place_hold(subject))["hold"]
    world.do("2025-01-06T10:00:00+01:00", {"type": "erase", "subject": subject})
    held = world.sweep(at("2025-02-01T12:00:00+01:00"))
    assert shredded_scopes(held, subject) == {}
    world.do(
        "2025-03-01T10:00:00+01:00",
        {"type": "release_legal_hold", "subject": subject, "hold": hold},
    )
    # a sweep for a moment before the erasure does not finish it (a dry run, say)
    early = world.sweep(at("2025-01-05T12:00:00+01:00"), dry_run=True)
    assert shredded_scopes(early, subject) == {}
    report = world.sweep(at("2025-03-01T12:00:00+01:00"))
    assert shredded_scopes(report, subject) == {"customer_data": "2025-01-06"}
    world.assert_shredded(subject, "customer_data", ["name", "address", "phone"])
    world.assert_kept(subject, "bookkeeping:2024", billed("F-2"))
    reasons = [
        e["details"]["reason"]
        for e in world.ledger.history(subject)
        if e["type"] == "ScopeShredded"
    ]
    assert reasons == ["erasure"]


def test_the_retention_report_sees_an_erasure_a_hold_delayed(world: World) -> None:
    """The report's overdue scopes are the ones the next sweep shreds: an erased person's
    data that only a hold kept is due from the day of the erasure (the report once showed
    the ordinary deadline, weeks later, and did not list it while the hold lasted)."""
    subject = customer(world, "2024-01-10T09:00:00+01:00")
    world.do("2025-04-15T12:00:00+02:00", end(subject))
    hold = world.do("2025-05-01T10:00:00+02:00", place_hold(subject))["hold"]
    world.do("2025-05-10T10:00:00+02:00", {"type": "erase", "subject": subject})

    def report(now: str) -> dict[str, Any]:
        found: dict[str, Any] = produce(world.ledger.read_models, "retention", now=at(now))
        return found

    kept = report("2025-05-12T12:00:00+02:00")
    assert [(i["scope"], i["deadline"]) for i in kept["held"]] == [("customer_data", "2025-05-10")]
    assert world.retention(subject)["customer_data"]["deadline"] == "2025-05-10"
    world.do(
        "2025-05-20T10:00:00+02:00",
        {"type": "release_legal_hold", "subject": subject, "hold": hold},
    )
    due = report("2025-05-25T12:00:00+02:00")
    assert [(i["scope"], i["deadline"]) for i in due["overdue"]] == [
        ("customer_data", "2025-05-10")
    ]
    assert not due["due_soon"]
    swept = world.sweep(at("2025-05-25T12:00:00+02:00"), dry_run=True)
    assert shredded_scopes(swept, subject) == {"customer_data": "2025-05-10"}


# -- the sweeper itself --------------------------------------------------------------------------


def seed_due(w: World) -> list[str]:
    """Three prospects due on 10 March 2025, one customer never due, one held prospect."""
    due = [
        register(w, "2025-01-10T09:00:00+01:00", kind="prospect", email=f"due{i}@example.dk")
        for i in range(3)
    ]
    held = register(w, "2025-01-10T09:00:00+01:00", kind="prospect", email="held@example.dk")
    w.do(
        "2025-02-01T10:00:00+01:00",
        {"type": "place_legal_hold", "subject": held, "reason": "tvist"},
    )
    customer(w, "2025-01-10T09:00:00+01:00")
    return due


def test_the_sweeper_is_idempotent(world: World) -> None:
    due = seed_due(world)
    now = at("2025-04-01T03:00:00+02:00")
    first = world.sweep(now)
    assert first["subjects"] == 5
    assert sorted(s["subject"] for s in first["shredded"]) == sorted(due)
    assert {s["scope"] for s in first["shredded"]} == {"customer_data"}
    position = world.ledger.max_position()
    records = sorted(world.ledger.keystore.records(), key=lambda r: r.kid)
    second = world.sweep(now)
    assert second["shredded"] == []
    assert second["reconciled_keys"] == 0
    assert world.ledger.max_position() == position
    assert sorted(world.ledger.keystore.records(), key=lambda r: r.kid) == records


def test_a_dry_run_writes_nothing(world: World) -> None:
    due = seed_due(world)
    now = at("2025-04-01T03:00:00+02:00")
    position = world.ledger.max_position()
    records = sorted(world.ledger.keystore.records(), key=lambda r: r.kid)
    dry = world.sweep(now, dry_run=True)
    assert dry["dry_run"] is True
    assert sorted(s["subject"] for s in dry["shredded"]) == sorted(due)
    assert world.ledger.max_position() == position
    assert sorted(world.ledger.keystore.records(), key=lambda r: r.kid) == records
    for subject in due:
        world.assert_kept(subject, "customer_data", {})
    real = world.sweep(now)
    assert real["shredded"] == dry["shredded"]


def test_sweep_through_the_cli_gives_what_the_facade_gives(
    world: World, cli_env: dict[str, str]
) -> None:
    due = seed_due(world)
    now = "2025-04-01T03:00:00+02:00"
    position = world.ledger.max_position()
    facade_dry = world.ledger.sweep(at(now), dry_run=True)

    def cli(*extra: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "ledger", "sweep", "--now", now, "--json", *extra],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        report: dict[str, Any] = json.loads(out.stdout)
        return report

    cli_dry = cli("--dry-run")
    assert world.ledger.max_position() == position
    cli_real = cli()
    for report in (cli_dry, cli_real):
        assert report["ok"] is True
        assert report["now"] == facade_dry["now"] == at(now).isoformat()
        assert report["subjects"] == facade_dry["subjects"] == 5
        assert report["shredded"] == facade_dry["shredded"]
    assert cli_dry["dry_run"] is True and cli_real["dry_run"] is False
    assert sorted(s["subject"] for s in cli_real["shredded"]) == sorted(due)
    for subject in due:
        world.assert_shredded(subject, "customer_data", ["email"])
    # the facade, at the same time, finds nothing left to do
    assert world.sweep(at(now))["shredded"] == []


def test_no_key_is_left_whose_scope_was_shredded(world: World) -> None:
    """Across everything above in one ledger: the key store agrees with the events."""
    for make in CASES.values():
        made = make(world)
        world.sweep(start_of(made.deadline))
    world.do(
        "2030-02-01T10:00:00+01:00",
        {"type": "erase", "subject": customer(world, "2030-01-01T10:00:00+01:00")},
    )
    shredded = {
        kid
        for subject in world.ledger.subject_ids()
        for e in world.ledger.history(subject)
        if e["type"] == "ScopeShredded"
        for kid in e["details"]["kids"]
    }
    assert len(shredded) >= len(CASES) + 1
    assert not shredded & world.ledger.keystore.live_kids()
