"""A seeded story for the report tests: `n` people (300 by default), every command type.

Person `i` is registered in January 2025 and then, depending on `i` modulo small numbers,
gives and withdraws consents, is disclosed, transferred, processed, erased, held,
restricted, makes requests ... (the schedule is in `commands_for`). The expectations in
`tests/test_reports.py` are counted by hand from this schedule, not by running any code
of the ledger.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ledger.facade import Ledger

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def subject_id(i: int) -> str:
    return f"5e1d0000-0000-4000-8000-{i:012d}"


def at(day: str, hour: int = 10) -> str:
    return f"{day}T{hour:02d}:00:00+00:00"


def is_customer(i: int) -> bool:
    return i % 3 != 2


def commands_for(i: int) -> list[dict[str, Any]]:
    """Person i's commands in the order they happened (all accepted)."""
    s = subject_id(i)
    day = f"2025-01-{1 + i % 28:02d}"
    out: list[dict[str, Any]] = []

    def add(command_type: str, when: str, /, **fields: Any) -> None:
        out.append({"type": command_type, "subject": s, "occurred_at": when, **fields})

    def collect(
        when: str, category: str, value: Any, purpose: str, basis: str, source: str, **extra: Any
    ) -> None:
        add(
            "collect",
            when,
            category=category,
            value=value,
            purpose=purpose,
            legal_basis=basis,
            source=source,
            **extra,
        )

    add(
        "register_subject",
        at(day, 9),
        kind="customer" if is_customer(i) else "prospect",
        purpose="customer_administration",
        legal_basis="contract",
        identifiers={"email": f"e{i}@example.dk", "phone": f"+45 5{i:07d}"},
    )
    ca = ("customer_administration", "contract", "subject")
    collect(at(day, 10), "name", f"Person {i}", *ca)
    collect(at(day, 10), "address", f"Gade {i}, 2300 København S", *ca)
    if is_customer(i):
        add("start_relationship", at(day, 11), relationship="customer")
    if i % 2 == 0:
        add(
            "give_consent",
            at("2025-02-01"),
            purpose="marketing",
            notice_version="2018-05-25",
            method="web_form",
            channels=["email", "sms"],
        )
    if i % 4 == 0:
        add(
            "give_consent",
            at("2025-02-03"),
            purpose="marketing",
            notice_version="2018-05-25",
            method="phone_call",
            channels=["phone"],
        )
    if i % 4 == 2:
        collect(
            at("2025-02-05"),
            "marketing_profile",
            {"segment": "A"},
            "marketing",
            "consent",
            "derived",
        )
    if i % 7 == 0:
        add(
            "notify_subject", at("2025-02-10"), notice="privacy_policy", policy_version="2018-05-25"
        )
    if is_customer(i):
        collect(
            at("2025-02-15"),
            "invoice",
            {"number": f"F-{i}", "amount_dkk": "499.00"},
            "bookkeeping",
            "legal_obligation",
            "system",
        )
    if i % 15 == 8:
        add(
            "give_consent",
            at("2025-02-20"),
            purpose="competition",
            notice_version="2018-05-25",
            method="web_form",
        )
        add(
            "enter_competition",
            at("2025-02-21"),
            competition="c-2025",
            competition_ends_on="2025-02-28",
        )
        collect(
            at("2025-02-22"),
            "competition_entry",
            {"answer": i},
            "competition",
            "consent",
            "subject",
            competition="c-2025",
        )
    if i % 30 == 5:
        add(
            "agree_disclosure",
            at("2025-03-01"),
            recipient={"kind": "family_member", "name": f"Pårørende {i}", "country": "DK"},
            categories=["name", "address"],
            purpose="customer_administration",
            valid_until="2026-12-31",
        )
        add("disclose", at("2025-03-02"), agreement="@agreement", categories=["name"])
    if i % 30 == 7:
        add(
            "agree_disclosure",
            at("2025-03-01"),
            recipient={"kind": "general_practitioner", "name": f"Læge {i}", "country": "SE"},
            categories=["name"],
            purpose="customer_administration",
        )
        add("disclose", at("2025-03-02"), agreement="@agreement", categories=["name"])
    if i % 12 == 4:
        collect(
            at("2025-03-10"),
            "call_recording",
            {"call": f"rec-{i}"},
            "call_documentation",
            "legitimate_interest",
            "observed",
        )
    if i % 10 == 1:
        add("open_request", at("2025-03-17"), right="access", received_at=at("2025-03-17"))
    if i % 4 == 0:
        collect(
            at("2025-03-20"),
            "marketing_profile",
            {"segment": "B"},
            "marketing",
            "consent",
            "derived",
        )
    if i == 31:
        add("extend_request", at("2025-03-20"), request="@request", reason="many records")
    if i % 2 == 0:
        add(
            "process",
            at("2025-04-01"),
            purpose="marketing",
            activity="newsletter_sent",
            channel="email",
        )
    if i % 60 == 5:
        add("revoke_disclosure_agreement", at("2025-04-01"), agreement="@agreement")
    if i % 20 == 1:
        add("complete_request", at("2025-04-10"), request="@request", outcome="fulfilled")
    if i % 5 == 0:
        add(
            "process",
            at("2025-04-15"),
            purpose="analytics",
            activity="segmentation",
            categories=["orders"],
        )
    if i % 25 == 1:
        add("object", at("2025-04-20"), purpose="analytics")
    if i % 10 == 0:
        add("withdraw_consent", at("2025-05-01"), purpose="marketing", channels=["sms"])
    if i % 40 == 11:
        add("complete_request", at("2025-05-05"), request="@request", outcome="fulfilled")
    if i % 11 == 0:
        add("rectify", at("2025-05-10"), category="address", value=f"Vej {i}, 8000 Aarhus C")
    if i % 40 == 9:
        add(
            "transfer",
            at("2025-05-15"),
            categories=["orders"],
            country="DE",
            recipient="Fragt GmbH",
        )
    if i % 6 == 0:
        add("end_relationship", at("2025-06-01"), relationship="customer")
    if i % 20 == 0:
        add("withdraw_consent", at("2025-06-01", 12), purpose="marketing")
    if i % 50 == 3:
        add("restrict", at("2025-07-01"), reason="accuracy contested")
    if i % 100 == 3:
        add("lift_restriction", at("2025-08-01"), reason="accuracy verified")
    if i % 50 == 7:
        add("open_request", at("2025-09-01"), right="erasure", received_at=at("2025-09-01"))
        add("verify_identity", at("2025-09-02"), request="@request")
        add("erase", at("2025-09-03"), request="@request")
        add("complete_request", at("2025-09-05"), request="@request", outcome="fulfilled")
    if i % 45 == 5:
        add("place_legal_hold", at("2025-10-01"), reason="dispute")
    if i % 90 == 5:
        add("release_legal_hold", at("2025-11-01"), hold="@hold")
    if i % 9 == 2:
        add("record_dialogue", at("2026-01-20"))
    if i % 100 == 99:
        add("open_request", at("2026-02-20"), right="portability", received_at=at("2026-02-20"))
    return out


def run_story(
    ledger: Ledger, n: int = 300, *, until: str | None = None, views: bool = True
) -> dict[str, Any]:
    """Execute the story (only commands that occurred by `until`, if given).

    Commands are executed one at a time so references (`@agreement`, `@request`, `@hold`)
    can be filled in from earlier results; returns what was created, by person.
    """
    made: dict[str, dict[int, str]] = {"agreement": {}, "request": {}, "hold": {}}
    for i in range(n):
        for command in commands_for(i):
            if until is not None and command["occurred_at"] > until:
                continue
            for ref in ("agreement", "request", "hold"):
                if command.get(ref) == f"@{ref}":
                    command[ref] = made[ref][i]
            result = ledger.execute(command, actor="story")
            assert result["ok"], (i, command["type"], result)
            for ref in ("agreement", "request", "hold"):
                if ref in result:
                    made[ref][i] = result[ref]
    rejected = []
    for i in range(n):
        if i % 60 == 5 and i in made["agreement"] and (until is None or until >= "2025-04-02"):
            # Disclosing under a revoked agreement is refused and writes nothing.
            rejected.append(
                ledger.execute(
                    {
                        "type": "disclose",
                        "subject": subject_id(i),
                        "agreement": made["agreement"][i],
                        "categories": ["name"],
                        "occurred_at": at("2025-04-02"),
                    }
                )
            )
    assert all(r["error"]["code"] == "no_disclosure_agreement" for r in rejected), rejected
    for i in range(0, n if views else 0, 33):
        ledger.subject(subject_id(i), reveal=True, purpose="customer called", actor="officer")
    return {"made": made, "rejected": len(rejected)}
