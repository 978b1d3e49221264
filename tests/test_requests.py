"""Data subject requests (R16, DESIGN 4.5 and 5.1) through the facade and the CLI.

The due date follows Regulation 1182/71 with the Danish holidays; the arithmetic itself is
covered by `test_calendar.py`, here it is checked end to end: what `open_request` and
`extend_request` answer, what is recorded, which requests `Ledger.requests` and
`ledger requests list` call late or overdue. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import datetime
from typing import Any

import pytest

from ledger.clock import FixedClock, parse_instant
from ledger.facade import Ledger

CA = "customer_administration"


def at(text: str) -> datetime:
    return parse_instant(text)


def ok(ledger: Ledger, command: dict[str, Any]) -> dict[str, Any]:
    result = ledger.execute(command)
    assert result.get("ok") is True, (command["type"], result)
    return result


def rejected(ledger: Ledger, command: dict[str, Any]) -> str:
    """The error code; and the rejected command wrote nothing."""
    before = ledger.max_position()
    result = ledger.execute(command)
    assert result["ok"] is False, (command["type"], result)
    assert ledger.max_position() == before
    return str(result["error"]["code"])


def register(ledger: Ledger, occurred_at: str = "2025-01-06T09:00:00+01:00") -> str:
    result = ok(
        ledger,
        {
            "type": "register_subject",
            "kind": "customer",
            "purpose": CA,
            "legal_basis": "contract",
            "identifiers": {"email": f"{uuid.uuid4().hex[:8]}@example.dk"},
            "occurred_at": occurred_at,
        },
    )
    return str(result["subject"])


def open_request(
    ledger: Ledger, subject: str, received_at: str, right: str = "access", **extra: Any
) -> dict[str, Any]:
    command = {"type": "open_request", "subject": subject, "right": right}
    command["received_at"] = received_at
    return ok(ledger, {**command, **extra})


def request_of(ledger: Ledger, subject: str, request: str) -> dict[str, Any]:
    found = [r for r in ledger.requests() if r["request"] == request]
    assert len(found) == 1
    assert found[0]["subject"] == subject
    return found[0]


@pytest.fixture
def late_clock(clock: FixedClock) -> FixedClock:
    """The world's time for these tests: after every request below was received."""
    clock.set(at("2025-12-31T12:00:00+01:00"))
    return clock


# -- opening ------------------------------------------------------------------------------


def test_open_request_due_date_through_the_facade(ledger: Ledger, clock: FixedClock) -> None:
    subject = register(ledger)
    clock.set(at("2025-03-17T11:00:00+01:00"))
    # received now (received_at defaults to the command's time)
    opened = ok(ledger, {"type": "open_request", "subject": subject, "right": "erasure"})
    assert opened["due"] == "2025-04-22"  # 17 April is Maundy Thursday, then Easter to the 21st
    uuid.UUID(opened["request"])
    view = ledger.subject(subject)
    assert view["requests"] == [
        {
            "request": opened["request"],
            "right": "erasure",
            "received_at": "2025-03-17T11:00:00+01:00",
            "due": "2025-04-22",
            "status": "open",
            "extended": False,
            "outcome": None,
            "completed_at": None,
        }
    ]
    history = ledger.history(subject)
    assert history[-1]["type"] == "RequestOpened"
    assert history[-1]["details"]["due"] == "2025-04-22"


def test_a_receipt_after_the_opening_or_an_extension_before_it_is_refused(
    ledger: Ledger, clock: FixedClock
) -> None:
    """A receipt dated after the request was opened (or in the future) would push its
    deadline at will; an extension dated before the receipt makes no sense either."""
    subject = register(ledger)
    clock.set(at("2025-06-01T12:00:00+02:00"))
    opening = {"type": "open_request", "subject": subject, "right": "access"}
    future = {**opening, "received_at": "2026-01-01T09:00:00+01:00"}
    assert rejected(ledger, future) == "invalid_command"
    later = {**opening, "received_at": "2025-05-20T10:00:00+02:00"}
    later["occurred_at"] = "2025-05-19T10:00:00+02:00"
    assert rejected(ledger, later) == "invalid_command"
    request = open_request(ledger, subject, "2025-05-20T10:00:00+02:00")["request"]
    extension = {
        "type": "extend_request",
        "subject": subject,
        "request": request,
        "reason": "complex request",
        "occurred_at": "2025-05-19T10:00:00+02:00",
    }
    assert rejected(ledger, extension) == "invalid_command"
    extension["occurred_at"] = "2025-05-21T10:00:00+02:00"
    assert ok(ledger, extension)["due"] == "2025-08-20"


def test_nothing_answers_a_request_before_it_was_received(
    ledger: Ledger, late_clock: FixedClock
) -> None:
    """A verification, completion or erasure dated before the receipt was once accepted,
    and the request counted as answered in time."""
    subject = register(ledger)
    received = "2025-05-01T10:00:00+02:00"
    before = "2025-04-20T10:00:00+02:00"
    access = open_request(ledger, subject, received)["request"]
    erasure = open_request(ledger, subject, received, right="erasure")["request"]
    base = {"subject": subject, "occurred_at": before}
    verify = {**base, "type": "verify_identity", "request": access}
    complete = {**base, "type": "complete_request", "request": access, "outcome": "fulfilled"}
    erase = {**base, "type": "erase", "request": erasure}
    for command in (verify, complete, erase):
        assert rejected(ledger, command) == "invalid_command", command["type"]
    after = "2025-05-02T10:00:00+02:00"
    ok(ledger, {**verify, "occurred_at": after})
    ok(ledger, {**complete, "occurred_at": after})
    assert request_of(ledger, subject, access)["status"] == "completed"


def test_an_erasure_answers_only_an_erasure_request(ledger: Ledger, late_clock: FixedClock) -> None:
    """`erase` citing an access request shredded the subject's data as if asked to."""
    subject = register(ledger)
    access = open_request(ledger, subject, "2025-05-01T10:00:00+02:00")["request"]
    erase = {"type": "erase", "subject": subject, "request": access}
    assert rejected(ledger, erase) == "invalid_command"
    assert ledger.subject(subject)["status"] == "active"
    erasure = open_request(ledger, subject, "2025-05-01T10:00:00+02:00", right="erasure")
    ok(ledger, {**erase, "request": erasure["request"]})
    assert ledger.subject(subject)["status"] == "erased"


def test_due_date_counts_from_receipt_in_copenhagen(ledger: Ledger, late_clock: FixedClock) -> None:
    subject = register(ledger)
    # Recorded months later: the receipt counts, not the recording.
    later = open_request(ledger, subject, "2025-03-17T09:00:00+01:00")
    assert later["due"] == "2025-04-22"
    # 23:30 UTC on the 16th is already the 17th in Copenhagen.
    evening = open_request(ledger, subject, "2025-03-16T23:30:00+00:00")
    assert evening["due"] == "2025-04-22"
    # ... while 22:30 UTC on the 16th is still the 16th: due 16 April (a Wednesday).
    before = open_request(ledger, subject, "2025-03-16T22:30:00+00:00")
    assert before["due"] == "2025-04-16"
    # the end of a longer month: 31 January, due the last day of February
    assert open_request(ledger, subject, "2025-01-31T10:00:00+01:00")["due"] == "2025-02-28"
    dues = {r["request"]: r["due"] for r in ledger.subject(subject)["requests"]}
    assert dues[later["request"]] == "2025-04-22"
    assert dues[before["request"]] == "2025-04-16"


# -- extension ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("received", "extended_on", "due", "extended_due"),
    [
        # an ordinary case: three months after receipt, a Tuesday
        ("2025-03-17T10:00:00+01:00", "2025-04-01T10:00:00+02:00", "2025-04-22", "2025-06-17"),
        # three months on is Whit Monday (8 June Whit Sunday): the next working day
        ("2025-03-09T10:00:00+01:00", "2025-03-20T10:00:00+01:00", "2025-04-09", "2025-06-10"),
        # 30 November + 3 months: 28 February 2026, a Saturday, so Monday 2 March
        ("2025-11-30T10:00:00+01:00", "2025-12-15T10:00:00+01:00", "2025-12-30", "2026-03-02"),
    ],
)
def test_extension_within_the_first_month(
    ledger: Ledger,
    late_clock: FixedClock,
    received: str,
    extended_on: str,
    due: str,
    extended_due: str,
) -> None:
    subject = register(ledger)
    opened = open_request(ledger, subject, received, occurred_at=received)
    assert opened["due"] == due
    late_clock.set(at("2026-01-05T12:00:00+01:00"))
    extended = ok(
        ledger,
        {
            "type": "extend_request",
            "subject": subject,
            "request": opened["request"],
            "reason": "many records in several systems",
            "occurred_at": extended_on,
        },
    )
    assert extended["due"] == extended_due
    found = request_of(ledger, subject, opened["request"])
    assert found["due"] == extended_due
    assert found["extended_at"] == extended_on
    assert found["extension_reason"] == "many records in several systems"
    assert found["status"] == "open"
    assert ledger.subject(subject)["requests"][0]["extended"] is True


def test_extension_on_the_last_day_of_the_first_month(
    ledger: Ledger, late_clock: FixedClock
) -> None:
    """The first month is a period of Regulation 1182/71 too: it ends on the due date.

    Received 17 March 2025: one month on is Maundy Thursday, so the month ends on Tuesday
    22 April, and the subject can still be told of an extension that day.
    """
    subject = register(ledger)
    received = "2025-03-17T10:00:00+01:00"
    first = open_request(ledger, subject, received)
    second = open_request(ledger, subject, received)

    def extend(request: str, when: str) -> dict[str, Any]:
        return {
            "type": "extend_request",
            "subject": subject,
            "request": request,
            "reason": "complex",
            "occurred_at": when,
        }

    extended = ok(ledger, extend(first["request"], "2025-04-22T16:00:00+02:00"))
    assert extended["due"] == "2025-06-17"
    assert rejected(ledger, extend(second["request"], "2025-04-23T08:00:00+02:00")) == (
        "extension_too_late"
    )


def test_extension_after_the_first_month_is_too_late(
    ledger: Ledger, late_clock: FixedClock
) -> None:
    subject = register(ledger)
    opened = open_request(ledger, subject, "2025-01-10T10:00:00+01:00")
    assert opened["due"] == "2025-02-10"
    command = {
        "type": "extend_request",
        "subject": subject,
        "request": opened["request"],
        "reason": "complex",
        "occurred_at": "2025-02-11T09:00:00+01:00",
    }
    assert rejected(ledger, command) == "extension_too_late"
    found = request_of(ledger, subject, opened["request"])
    assert found["due"] == "2025-02-10"
    assert found["extended_at"] is None
    # the rejection is no more than that: the request can still be answered
    ok(
        ledger,
        {
            "type": "complete_request",
            "subject": subject,
            "request": opened["request"],
            "outcome": "fulfilled",
            "occurred_at": "2025-02-11T10:00:00+01:00",
        },
    )


def test_a_second_extension_is_refused(ledger: Ledger, late_clock: FixedClock) -> None:
    subject = register(ledger)
    opened = open_request(ledger, subject, "2025-05-05T10:00:00+02:00")
    command = {
        "type": "extend_request",
        "subject": subject,
        "request": opened["request"],
        "reason": "complex",
        "occurred_at": "2025-05-10T10:00:00+02:00",
    }
    assert ok(ledger, command)["due"] == "2025-08-05"
    again = {**command, "reason": "still complex", "occurred_at": "2025-05-12T10:00:00+02:00"}
    assert rejected(ledger, again) == "extension_too_late"
    found = request_of(ledger, subject, opened["request"])
    assert found["due"] == "2025-08-05"
    assert found["extension_reason"] == "complex"


# -- identity, completion, unknown requests ---------------------------------------------


def test_verify_identity_then_complete_then_closed(ledger: Ledger, late_clock: FixedClock) -> None:
    subject = register(ledger)
    request = open_request(ledger, subject, "2025-03-17T10:00:00+01:00", right="erasure")["request"]
    ok(
        ledger,
        {
            "type": "verify_identity",
            "subject": subject,
            "request": request,
            "occurred_at": "2025-03-18T10:00:00+01:00",
            "actor": "officer-7",
        },
    )
    found = request_of(ledger, subject, request)
    assert found["verified_at"] == "2025-03-18T10:00:00+01:00"
    assert found["status"] == "open"
    verified = ledger.history(subject)[-1]
    assert verified["type"] == "IdentityVerified"
    assert verified["actor"] == "officer-7"
    assert verified["details"]["request"] == request

    ok(
        ledger,
        {
            "type": "complete_request",
            "subject": subject,
            "request": request,
            "outcome": "partially_fulfilled",
            "note": "bookkeeping kept",
            "occurred_at": "2025-04-01T10:00:00+02:00",
        },
    )
    found = request_of(ledger, subject, request)
    assert found["status"] == "completed"
    assert found["outcome"] == "partially_fulfilled"
    assert found["completed_at"] == "2025-04-01T10:00:00+02:00"
    assert found["late"] is False

    for command in (
        {"type": "verify_identity", "subject": subject, "request": request},
        {
            "type": "extend_request",
            "subject": subject,
            "request": request,
            "reason": "r",
            "occurred_at": "2025-04-02T10:00:00+02:00",
        },
        {"type": "complete_request", "subject": subject, "request": request, "outcome": "refused"},
        {"type": "erase", "subject": subject, "request": request},
        {
            "type": "rectify",
            "subject": subject,
            "category": "email",
            "value": "ny@example.dk",
            "request": request,
        },
    ):
        assert rejected(ledger, command) == "request_closed", command["type"]
    assert request_of(ledger, subject, request)["outcome"] == "partially_fulfilled"


def test_unknown_request(ledger: Ledger, late_clock: FixedClock) -> None:
    subject = register(ledger)
    other = register(ledger)
    # a request of another subject is unknown here
    foreign = open_request(ledger, other, "2025-03-17T10:00:00+01:00")["request"]
    for request in (str(uuid.uuid4()), foreign):
        for command in (
            {"type": "verify_identity", "subject": subject, "request": request},
            {"type": "extend_request", "subject": subject, "request": request, "reason": "r"},
            {
                "type": "complete_request",
                "subject": subject,
                "request": request,
                "outcome": "fulfilled",
            },
            {"type": "erase", "subject": subject, "request": request},
        ):
            assert rejected(ledger, command) == "unknown_request", command["type"]
    assert request_of(ledger, other, foreign)["status"] == "open"


# -- lists: late and overdue -------------------------------------------------------------


def seed_requests(ledger: Ledger) -> dict[str, tuple[str, str]]:
    """Five requests, by name: (subject, request)."""
    made: dict[str, tuple[str, str]] = {}

    def make(name: str, received: str) -> tuple[str, str]:
        subject = register(ledger)
        made[name] = (subject, open_request(ledger, subject, received)["request"])
        return made[name]

    def complete(name: str, when: str) -> None:
        subject, request = made[name]
        ok(
            ledger,
            {
                "type": "complete_request",
                "subject": subject,
                "request": request,
                "outcome": "fulfilled",
                "occurred_at": when,
            },
        )

    make("open_past_due", "2025-03-17T10:00:00+01:00")  # due 22 April
    make("completed_late", "2025-03-17T10:00:00+01:00")
    complete("completed_late", "2025-04-25T10:00:00+02:00")
    make("completed_in_time", "2025-03-17T10:00:00+01:00")
    complete("completed_in_time", "2025-04-22T17:00:00+02:00")  # on the due date: in time
    make("open_not_due", "2025-04-10T10:00:00+02:00")  # due 12 May (10 May is a Saturday)
    subject, request = make("open_extended", "2025-03-17T10:00:00+01:00")
    ok(
        ledger,
        {
            "type": "extend_request",
            "subject": subject,
            "request": request,
            "reason": "complex",
            "occurred_at": "2025-04-01T10:00:00+02:00",
        },
    )
    return made


def test_requests_late_and_overdue_through_the_facade(
    ledger: Ledger, late_clock: FixedClock
) -> None:
    made = seed_requests(ledger)
    names = {request: name for name, (_, request) in made.items()}
    now = at("2025-05-01T12:00:00+02:00")

    everything = ledger.requests(now=now)
    assert {names[r["request"]]: r["late"] for r in everything} == {
        "open_past_due": True,
        "completed_late": True,  # marked late ...
        "completed_in_time": False,
        "open_not_due": False,
        "open_extended": False,  # due 17 June after the extension
    }
    by_name = {names[r["request"]]: r for r in everything}
    assert by_name["open_past_due"]["due"] == "2025-04-22"
    assert by_name["open_not_due"]["due"] == "2025-05-12"
    assert by_name["open_extended"]["due"] == "2025-06-17"
    assert by_name["completed_late"]["status"] == "completed"
    assert [r["due"] for r in everything] == sorted(r["due"] for r in everything)
    for name, (subject, _) in made.items():
        assert by_name[name]["subject"] == subject

    overdue = ledger.requests(overdue=True, now=now)
    assert [names[r["request"]] for r in overdue] == ["open_past_due"]  # ... but not overdue
    assert overdue[0]["subject"] == made["open_past_due"][0]
    assert overdue[0]["late"] is True

    # The due date itself is in time; overdue from the next Copenhagen day.
    assert ledger.requests(overdue=True, now=at("2025-04-22T23:59:00+02:00")) == []
    just_after = ledger.requests(overdue=True, now=at("2025-04-22T22:00:00+00:00"))
    assert [names[r["request"]] for r in just_after] == ["open_past_due"]
    # after the extended due date both open requests are overdue
    later = ledger.requests(overdue=True, now=at("2025-06-18T09:00:00+02:00"))
    assert sorted(names[r["request"]] for r in later) == [
        "open_extended",
        "open_not_due",
        "open_past_due",
    ]


def test_requests_list_overdue_through_the_cli(
    ledger: Ledger, late_clock: FixedClock, cli_env: dict[str, str]
) -> None:
    made = seed_requests(ledger)
    now = "2025-05-01T12:00:00+02:00"
    out = subprocess.run(
        [sys.executable, "-m", "ledger", "requests", "list", "--overdue", "--now", now, "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    listed = json.loads(out.stdout)["requests"]
    assert listed == ledger.requests(overdue=True, now=at(now))
    assert [(r["subject"], r["request"]) for r in listed] == [made["open_past_due"]]
    assert listed[0]["late"] is True
    assert listed[0]["status"] == "open"
