"""Rules R1–R14 and R17 (DESIGN 2) and every error code of DESIGN 5.2 the core commands give.

Each rejection is checked to write nothing (no event, no key) and to carry a message
without the values the command gave. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.facade import Ledger
from ledger.policies import DEFAULT_POLICY
from ledger.reports import produce

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
CA = "customer_administration"


# -- helpers --------------------------------------------------------------------------


def state(ledger: Ledger) -> tuple[int, list[Any], set[str]]:
    """Everything a command can write: the event log and the key store."""
    records = sorted(ledger.keystore.records(), key=lambda r: r.kid)
    return ledger.max_position(), records, ledger.keystore.live_kids()


def ok(ledger: Ledger, command: dict[str, Any]) -> dict[str, Any]:
    result = ledger.execute(command)
    assert result.get("ok") is True, (command.get("type"), result)
    return result


def fails(ledger: Ledger, command: dict[str, Any], code: str) -> str:
    """Expect the code; check nothing was written and no given value is in the message."""
    before = state(ledger)
    result = ledger.execute(command)
    assert result["ok"] is False, (command.get("type"), result)
    assert result["error"]["code"] == code, (command.get("type"), result)
    assert state(ledger) == before, "a rejected command wrote something"
    message = result["error"]["message"]
    assert isinstance(message, str) and message
    for value in _personal_values(command):
        assert value not in message
        assert value.lower() not in message.lower()
    return str(message)


def _personal_values(command: dict[str, Any]) -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, str) and len(node) >= 4:
            found.append(node)
        elif isinstance(node, dict):
            for item in node.values():
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(command.get("value"))
    walk(command.get("identifiers"))
    walk((command.get("recipient") or {}).get("name") if command["type"] != "transfer" else None)
    return found


def register(ledger: Ledger, **fields: Any) -> str:
    command = {
        "type": "register_subject",
        "kind": "customer",
        "purpose": CA,
        "legal_basis": "contract",
        **fields,
    }
    return str(ok(ledger, command)["subject"])


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


def consent(subject: str, purpose: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "give_consent",
        "subject": subject,
        "purpose": purpose,
        "notice_version": "2018-05-25",
        "method": "web_form",
        **fields,
    }


def process(subject: str, purpose: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "process",
        "subject": subject,
        "purpose": purpose,
        "activity": "campaign",
        **fields,
    }


def agreement_for(subject: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "agree_disclosure",
        "subject": subject,
        "recipient": {"kind": "family_member", "name": "Åse Østergård", "country": "DK"},
        "categories": ["consumption"],
        "purpose": CA,
        **fields,
    }


def disclose(subject: str, agreement: str, categories: list[str], **fields: Any) -> dict[str, Any]:
    return {
        "type": "disclose",
        "subject": subject,
        "agreement": agreement,
        "categories": categories,
        **fields,
    }


def transfer(subject: str, country: str) -> dict[str, Any]:
    return {
        "type": "transfer",
        "subject": subject,
        "categories": ["orders"],
        "country": country,
        "recipient": "Nordic Hosting AS",
    }


def simple(kind: str, subject: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "subject": subject, **fields}


def customer(ledger: Ledger) -> str:
    """A customer with the mandatory data on file and an active relationship."""
    subject = register(ledger, identifiers={"phone": "+45 20 30 40 50"})
    ok(ledger, collect(subject, "name", "Bjørn Ærtebølle"))
    ok(ledger, collect(subject, "address", "Østerbrogade 1, 2100 København Ø"))
    ok(ledger, simple("start_relationship", subject, relationship="customer"))
    return subject


def revealed(ledger: Ledger, subject: str) -> dict[str, Any]:
    view = ledger.subject(subject, reveal=True, purpose="rule test", actor="tests")
    return {item["category"]: item for item in view["data"]}


def random_id() -> str:
    return str(uuid.uuid4())


# -- R1: only catalogue categories ----------------------------------------------------


def test_r1_unknown_category_is_rejected(ledger: Ledger) -> None:
    subject = register(ledger)
    fails(ledger, collect(subject, "shoe_size", "Størrelse 42"), "unknown_category")
    ok(ledger, collect(subject, "consumption", "4200 kWh"))


def test_r1_unknown_category_in_every_command_naming_categories(ledger: Ledger) -> None:
    subject = customer(ledger)
    agreement = ok(ledger, agreement_for(subject))["agreement"]
    fails(
        ledger, agreement_for(subject, categories=["consumption", "shoe_size"]), "unknown_category"
    )
    fails(ledger, disclose(subject, agreement, ["shoe_size"]), "unknown_category")
    fails(ledger, {**transfer(subject, "SE"), "categories": ["shoe_size"]}, "unknown_category")
    fails(ledger, process(subject, "analytics", categories=["shoe_size"]), "unknown_category")
    fails(ledger, consent(subject, CA, explicit=True, categories=["shoe_size"]), "unknown_category")
    fails(
        ledger,
        {"type": "rectify", "subject": subject, "category": "shoe_size", "value": "43"},
        "unknown_category",
    )


# -- R2: purpose allows the category, on a basis the purpose allows --------------------


def test_r2_purpose_not_allowed(ledger: Ledger) -> None:
    subject = register(ledger)
    fails(
        ledger,
        collect(
            subject,
            "cpr",
            "0101801234",
            purpose="marketing",
            legal_basis="legitimate_interest",
            cpr_ground="identification",
        ),
        "purpose_not_allowed",
    )
    fails(
        ledger,
        collect(subject, "invoice", {"number": "F-1"}, purpose=CA),
        "purpose_not_allowed",
    )
    fails(ledger, process(subject, "analytics", categories=["name"]), "purpose_not_allowed")
    fails(
        ledger,
        consent(subject, "marketing", explicit=True, categories=["health"]),
        "purpose_not_allowed",
    )
    fails(
        ledger,
        agreement_for(subject, purpose="marketing", categories=["health"]),
        "purpose_not_allowed",
    )
    ok(ledger, process(subject, "analytics", categories=["consumption"]))


def test_r2_legal_basis_not_allowed(ledger: Ledger) -> None:
    subject = register(ledger)
    fails(
        ledger,
        collect(
            subject,
            "invoice",
            {"number": "F-77123", "amount_dkk": "10.00"},
            purpose="bookkeeping",
            legal_basis="consent",
            source="system",
        ),
        "legal_basis_not_allowed",
    )
    fails(
        ledger,
        collect(subject, "name", "Åge Ærø", legal_basis="consent"),
        "legal_basis_not_allowed",
    )
    fails(
        ledger,
        collect(subject, "name", "Åge Ærø", legal_basis="legal_obligation"),
        "legal_basis_not_allowed",
    )
    before = state(ledger)
    result = ledger.execute(
        {
            "type": "register_subject",
            "kind": "prospect",
            "purpose": "analytics",
            "legal_basis": "contract",
        }
    )
    assert result["error"]["code"] == "legal_basis_not_allowed"
    assert state(ledger) == before
    ok(ledger, collect(subject, "name", "Åge Ærø", legal_basis="legitimate_interest"))
    ok(
        ledger,
        collect(
            subject,
            "invoice",
            {"number": "F-77123", "amount_dkk": "10.00"},
            purpose="bookkeeping",
            legal_basis="legal_obligation",
            source="system",
        ),
    )


def test_unknown_purpose_in_every_command_naming_one(ledger: Ledger) -> None:
    subject = register(ledger)
    fails(
        ledger, collect(subject, "name", "Åge Ærø", purpose="world_domination"), "unknown_purpose"
    )
    fails(ledger, consent(subject, "world_domination"), "unknown_purpose")
    fails(
        ledger, simple("withdraw_consent", subject, purpose="world_domination"), "unknown_purpose"
    )
    fails(ledger, simple("object", subject, purpose="world_domination"), "unknown_purpose")
    fails(ledger, process(subject, "world_domination"), "unknown_purpose")
    fails(ledger, agreement_for(subject, purpose="world_domination"), "unknown_purpose")
    fails(
        ledger,
        simple(
            "notify_subject",
            subject,
            notice="new_purpose",
            policy_version="2",
            purpose="world_domination",
        ),
        "unknown_purpose",
    )
    before = state(ledger)
    result = ledger.execute(
        {
            "type": "register_subject",
            "kind": "customer",
            "purpose": "world_domination",
            "legal_basis": "contract",
        }
    )
    assert result["error"]["code"] == "unknown_purpose"
    assert state(ledger) == before


# -- R3: sensitive data only from the subject, with explicit consent -------------------


@pytest.mark.parametrize("category", ["health", "family_relations", "social_problems"])
def test_r3_sensitive_data_needs_subject_source_and_explicit_consent(
    ledger: Ledger, category: str
) -> None:
    subject = register(ledger)
    value = "Bruger iltapparat om natten"
    for source in ("third_party", "observed", "derived", "system"):
        fails(
            ledger,
            collect(subject, category, value, source=source),
            "sensitive_requires_subject_source",
        )
    fails(ledger, collect(subject, category, value), "explicit_consent_required")
    # a consent to the purpose that is not explicit does not do
    ok(ledger, consent(subject, CA))
    fails(ledger, collect(subject, category, value), "explicit_consent_required")
    # an explicit consent that names another category does not do either
    other = "family_relations" if category == "health" else "health"
    ok(ledger, consent(subject, CA, explicit=True, categories=[other]))
    fails(ledger, collect(subject, category, value), "explicit_consent_required")
    # even with explicit consent, only the subject may give it
    ok(ledger, consent(subject, CA, explicit=True, categories=[category]))
    fails(
        ledger,
        collect(subject, category, value, source="third_party"),
        "sensitive_requires_subject_source",
    )
    ok(ledger, collect(subject, category, value))
    assert revealed(ledger, subject)[category]["value"] == value
    # withdrawal stops further collection
    ok(ledger, simple("withdraw_consent", subject, purpose=CA))
    fails(ledger, collect(subject, category, value), "explicit_consent_required")


def test_r3_consent_naming_categories_must_be_explicit(ledger: Ledger) -> None:
    subject = register(ledger)
    fails(ledger, consent(subject, CA, categories=["health"]), "invalid_command")
    fails(ledger, consent(subject, CA, explicit=False, categories=["health"]), "invalid_command")


# -- R4: CPR numbers ------------------------------------------------------------------


def test_r4_cpr_needs_a_ground(ledger: Ledger) -> None:
    subject = register(ledger)
    fails(ledger, collect(subject, "cpr", "0101801234"), "cpr_ground_required")
    before = state(ledger)
    result = ledger.execute(
        {
            "type": "register_subject",
            "kind": "customer",
            "purpose": CA,
            "legal_basis": "contract",
            "identifiers": {"email": "ærlig@example.dk", "cpr": "0101801234"},
        }
    )
    assert result["error"]["code"] == "cpr_ground_required"
    assert "0101801234" not in result["error"]["message"]
    assert state(ledger) == before
    fails(ledger, collect(subject, "name", "Åge", cpr_ground="law"), "invalid_command")
    for ground in ("law", "identification"):
        ok(ledger, collect(subject, "cpr", "0101801234", cpr_ground=ground))


def test_r4_cpr_on_the_ground_consent_needs_an_active_consent(ledger: Ledger) -> None:
    subject = register(ledger)
    fails(ledger, collect(subject, "cpr", "0101801234", cpr_ground="consent"), "consent_required")
    ok(ledger, consent(subject, CA))
    ok(ledger, collect(subject, "cpr", "0101801234", cpr_ground="consent"))


INVALID_CPRS = [
    "3102801234",  # 31 February
    "0000801234",  # day 0
    "0113801234",  # month 13
    "2902014234",  # 29 Feb 2001 (7th digit 4, YY 01: 2001, not a leap year)
    "010180123",  # nine digits
    "01018012345",  # eleven digits
    "0101-801234",  # hyphen in the wrong place
    "010180--1234",
    "01018O1234",  # a letter O
    "010180 1234",
    " 0101801234",
    "٠١٠١٨٠١٢٣٤",  # Arabic-Indic digits
]


def test_r4_invalid_cpr(ledger: Ledger) -> None:
    subject = register(ledger)
    for bad in INVALID_CPRS:
        fails(ledger, collect(subject, "cpr", bad, cpr_ground="identification"), "invalid_cpr")
        before = state(ledger)
        result = ledger.execute(
            {
                "type": "register_subject",
                "kind": "customer",
                "purpose": CA,
                "legal_basis": "contract",
                "identifiers": {"cpr": bad},
                "cpr_ground": "law",
            }
        )
        assert result["error"]["code"] == "invalid_cpr", bad
        assert bad.strip() not in result["error"]["message"]
        assert state(ledger) == before
    # an impossible date is the only check: a number failing modulus 11 is accepted
    ok(ledger, collect(subject, "cpr", "2902004234", cpr_ground="law"))  # 29 Feb 2000


def test_r4_cpr_that_is_not_a_string_is_invalid(ledger: Ledger) -> None:
    subject = register(ledger)
    fails(ledger, collect(subject, "cpr", 101801234, cpr_ground="law"), "invalid_cpr")
    fails(ledger, collect(subject, "cpr", ["0101801234"], cpr_ground="law"), "invalid_cpr")


def test_r4_cpr_with_hyphen_is_stored_normalised(ledger: Ledger) -> None:
    subject = register(ledger, identifiers={"cpr": "070761-4285"}, cpr_ground="identification")
    item = revealed(ledger, subject)["cpr"]
    assert item["value"] == "0707614285"
    assert ledger.find("cpr", "0707614285") == [subject]
    assert ledger.find("cpr", "070761-4285") == [subject]
    other = register(ledger)
    ok(ledger, collect(other, "cpr", "311299-9995", cpr_ground="law"))  # fails modulus 11
    assert revealed(ledger, other)["cpr"]["value"] == "3112999995"
    # rectification normalises too, and an invalid one is rejected
    ok(ledger, {"type": "rectify", "subject": other, "category": "cpr", "value": "010203-4567"})
    assert revealed(ledger, other)["cpr"]["value"] == "0102034567"
    fails(
        ledger,
        {"type": "rectify", "subject": other, "category": "cpr", "value": "320203-4567"},
        "invalid_cpr",
    )


# -- R5: consent where the basis or the channel needs it -----------------------------


def test_r5_collection_on_consent_needs_consent(ledger: Ledger) -> None:
    subject = register(ledger)
    command = collect(
        subject,
        "marketing_profile",
        {"segment": "grøn energi"},
        purpose="marketing",
        legal_basis="consent",
    )
    fails(ledger, command, "consent_required")
    ok(ledger, consent(subject, "marketing"))
    ok(ledger, command)


def test_r5_electronic_and_telephone_marketing_need_channel_consent(ledger: Ledger) -> None:
    subject = register(ledger)
    for channel in ("email", "sms", "phone"):
        fails(ledger, process(subject, "marketing", channel=channel), "consent_required")
    ok(ledger, process(subject, "marketing", channel="post"))  # legitimate interest
    ok(ledger, consent(subject, "marketing", channels=["email"]))
    ok(ledger, process(subject, "marketing", channel="email"))
    fails(ledger, process(subject, "marketing", channel="sms"), "consent_required")
    fails(ledger, process(subject, "marketing", channel="phone"), "consent_required")
    ok(ledger, consent(subject, "marketing", channels=["sms"]))
    ok(ledger, process(subject, "marketing", channel="sms"))
    ok(ledger, process(subject, "marketing", channel="email"))  # channels accumulate


def test_r5_consent_only_purposes_need_consent(ledger: Ledger) -> None:
    subject = register(ledger)
    fails(ledger, process(subject, "competition"), "consent_required")
    fails(
        ledger,
        simple(
            "enter_competition",
            subject,
            competition="sommer-2026",
            competition_ends_on="2026-08-31",
        ),
        "consent_required",
    )
    ok(ledger, consent(subject, "competition"))
    ok(ledger, process(subject, "competition"))
    ok(
        ledger,
        simple(
            "enter_competition",
            subject,
            competition="sommer-2026",
            competition_ends_on="2026-08-31",
        ),
    )
    entry = collect(
        subject,
        "competition_entry",
        {"answer": "Vindmølle"},
        purpose="competition",
        legal_basis="consent",
    )
    fails(ledger, entry, "invalid_command")  # names no competition
    fails(ledger, {**entry, "competition": "vinter-2026"}, "invalid_command")  # not entered
    ok(ledger, {**entry, "competition": "sommer-2026"})
    assert revealed(ledger, subject)["competition_entry"]["scope"] == "competition:sommer-2026"


# -- R6/R7: objections ------------------------------------------------------------------


def test_r6_objection_to_direct_marketing_is_unconditional(ledger: Ledger) -> None:
    subject = register(ledger)
    ok(ledger, consent(subject, "marketing", channels=["email", "sms", "phone"]))
    ok(ledger, process(subject, "marketing", channel="email"))
    ok(ledger, simple("object", subject, purpose="marketing"))
    for channel in ("email", "sms", "phone", "post", "online_ads"):
        fails(ledger, process(subject, "marketing", channel=channel), "objected")
    fails(ledger, process(subject, "marketing"), "objected")
    for basis in ("consent", "legitimate_interest"):
        command = collect(
            subject, "marketing_profile", {"segment": "x"}, purpose="marketing", legal_basis=basis
        )
        fails(ledger, command, "objected")
    ok(ledger, process(subject, "analytics"))  # other purposes go on


def test_r6_objection_stands_after_a_new_consent(ledger: Ledger) -> None:
    """No marketing on any channel afterwards: a later consent does not lift it (R6)."""
    subject = register(ledger)
    ok(ledger, simple("object", subject, purpose="marketing"))
    ok(ledger, consent(subject, "marketing", channels=["email"]))
    fails(ledger, process(subject, "marketing", channel="email"), "objected")


def test_r7_objection_to_legitimate_interest_stops_that_purpose(ledger: Ledger) -> None:
    subject = register(ledger)
    ok(ledger, process(subject, "analytics"))
    ok(ledger, simple("object", subject, purpose="analytics"))
    fails(ledger, process(subject, "analytics"), "objected")
    fails(
        ledger,
        collect(
            subject,
            "digital_behaviour",
            {"clicks": 3},
            purpose="analytics",
            legal_basis="legitimate_interest",
            source="observed",
        ),
        "objected",
    )
    ok(ledger, process(subject, "digital_services"))
    view = ledger.subject(subject)
    assert [o["purpose"] for o in view["objections"]] == ["analytics"]


def test_r7_objection_bites_only_the_legitimate_interest_basis(ledger: Ledger) -> None:
    subject = register(ledger)
    ok(ledger, simple("object", subject, purpose=CA))
    ok(ledger, collect(subject, "name", "Ærø Søndergård", legal_basis="contract"))
    fails(
        ledger,
        collect(subject, "orders", ["kaffemaskine"], legal_basis="legitimate_interest"),
        "objected",
    )


def test_r7_a_processing_act_may_name_the_basis_it_rests_on(ledger: Ledger) -> None:
    """`process` takes an optional `legal_basis` (beyond DESIGN 5.1): after an objection to
    customer administration, billing under the contract goes on; an act that names no
    basis, or legitimate interest, is stopped; a basis the purpose lacks is refused; an
    objection to direct marketing stops marketing whatever basis is named."""
    subject = customer(ledger)
    ok(ledger, simple("object", subject, purpose=CA))
    billing = process(subject, CA, activity="invoice_prepared")
    fails(ledger, billing, "objected")
    fails(ledger, {**billing, "legal_basis": "legitimate_interest"}, "objected")
    ok(ledger, {**billing, "legal_basis": "contract"})
    fails(ledger, {**billing, "legal_basis": "consent"}, "legal_basis_not_allowed")
    acts = [e for e in ledger.history(subject) if e["type"] == "DataProcessed"]
    assert acts[-1]["details"]["legal_basis"] == "contract"
    ok(ledger, consent(subject, "marketing", channels=["email"]))
    ok(ledger, simple("object", subject, purpose="marketing"))
    sending = process(subject, "marketing", channel="email", legal_basis="consent")
    fails(ledger, sending, "objected")


def test_r7_no_objection_to_purposes_without_legitimate_interest(ledger: Ledger) -> None:
    subject = register(ledger)
    fails(ledger, simple("object", subject, purpose="bookkeeping"), "legal_basis_not_allowed")
    fails(ledger, simple("object", subject, purpose="competition"), "legal_basis_not_allowed")


# -- R8: withdrawal --------------------------------------------------------------------


def test_r8_withdrawal_stops_future_processing_and_keeps_the_past(ledger: Ledger) -> None:
    subject = register(ledger)
    ok(ledger, consent(subject, "marketing", channels=["email", "sms"]))
    ok(ledger, process(subject, "marketing", channel="email"))
    ok(ledger, process(subject, "marketing", channel="sms"))
    ok(ledger, simple("withdraw_consent", subject, purpose="marketing", channels=["email"]))
    fails(ledger, process(subject, "marketing", channel="email"), "consent_required")
    ok(ledger, process(subject, "marketing", channel="sms"))
    ok(ledger, simple("withdraw_consent", subject, purpose="marketing"))
    fails(ledger, process(subject, "marketing", channel="sms"), "consent_required")
    fails(
        ledger,
        collect(
            subject,
            "marketing_profile",
            {"segment": "x"},
            purpose="marketing",
            legal_basis="consent",
        ),
        "consent_required",
    )
    fails(ledger, simple("withdraw_consent", subject, purpose="marketing"), "consent_required")
    history = ledger.history(subject)
    processed = [e for e in history if e["type"] == "DataProcessed"]
    assert [e["details"]["channel"] for e in processed] == ["email", "sms", "sms"]
    consents = {c["purpose"]: c for c in ledger.subject(subject)["consents"]}
    assert consents["marketing"]["active"] is False
    assert consents["marketing"]["withdrawn_at"] is not None


def test_r8_withdrawing_every_channel_one_by_one_withdraws_the_consent(ledger: Ledger) -> None:
    """A consent given for channels, withdrawn channel by channel until none is left, is
    withdrawn: nothing may rest on it any more (it once stayed active with no channel)."""
    subject = register(ledger)
    ok(ledger, consent(subject, "marketing", channels=["email", "sms"]))
    ok(ledger, simple("withdraw_consent", subject, purpose="marketing", channels=["email"]))
    profile = collect(
        subject, "marketing_profile", {"segment": "x"}, purpose="marketing", legal_basis="consent"
    )
    ok(ledger, profile)
    ok(ledger, simple("withdraw_consent", subject, purpose="marketing", channels=["sms"]))
    fails(ledger, profile, "consent_required")
    fails(ledger, process(subject, "marketing", channel="sms"), "consent_required")
    consents = {c["purpose"]: c for c in ledger.subject(subject)["consents"]}
    assert consents["marketing"]["active"] is False
    assert consents["marketing"]["withdrawn_at"] is not None
    report = produce(ledger.read_models, "consent", now=ledger.clock.now())
    marketing = {p["purpose"]: p for p in report["purposes"]}["marketing"]
    assert marketing["full_withdrawals"] == 1 and marketing["active"] == 0
    # a consent for the purpose alone (no channels) is not ended by naming a channel
    ok(ledger, consent(subject, "competition"))
    ok(ledger, simple("withdraw_consent", subject, purpose="competition", channels=["email"]))
    consents = {c["purpose"]: c for c in ledger.subject(subject)["consents"]}
    assert consents["competition"]["active"] is True


def test_r5_a_consent_given_again_widens_the_active_one_and_starts_afresh_after_withdrawal(
    ledger: Ledger,
) -> None:
    """The rule the aggregate, the read models and the audit's replay share
    (`consent_widened`), seen from the outside: the aggregate's rules and the shown
    consent agree."""
    subject = register(ledger)
    ok(ledger, consent(subject, "marketing", channels=["email"]))
    ok(ledger, consent(subject, "marketing", channels=["sms"]))
    ok(ledger, process(subject, "marketing", channel="email"))  # the first channel stays
    shown = {c["purpose"]: c for c in ledger.subject(subject)["consents"]}["marketing"]
    assert shown["channels"] == ["email", "sms"] and shown["active"] is True
    ok(ledger, simple("withdraw_consent", subject, purpose="marketing"))
    ok(ledger, consent(subject, "marketing", channels=["sms"]))
    fails(ledger, process(subject, "marketing", channel="email"), "consent_required")
    shown = {c["purpose"]: c for c in ledger.subject(subject)["consents"]}["marketing"]
    assert shown["channels"] == ["sms"] and shown["withdrawn_at"] is None


def test_r6_the_consent_report_sets_aside_consents_of_people_who_objected(
    ledger: Ledger,
) -> None:
    """An objection to direct marketing ends marketing on every channel (R6), so the
    consent report no longer counts that person's consent as in force."""
    objecting, other = register(ledger), register(ledger)
    for subject in (objecting, other):
        ok(ledger, consent(subject, "marketing", channels=["email", "sms"]))
    ok(ledger, simple("object", objecting, purpose="marketing"))
    fails(ledger, process(objecting, "marketing", channel="email"), "objected")
    report = produce(ledger.read_models, "consent", now=ledger.clock.now())
    marketing = {p["purpose"]: p for p in report["purposes"]}["marketing"]
    assert marketing["active"] == 1 and marketing["set_aside_by_objection"] == 1
    channels = {c["channel"]: c["active"] for c in marketing["channels"]}
    assert channels["email"] == 1 and channels["sms"] == 1


# -- R9: restriction ---------------------------------------------------------------------


def test_r9_restriction_allows_nothing_but_storage(ledger: Ledger) -> None:
    subject = customer(ledger)
    agreement = ok(ledger, agreement_for(subject))["agreement"]
    ok(ledger, consent(subject, "competition"))
    ok(ledger, simple("restrict", subject, reason="accuracy contested"))
    fails(ledger, process(subject, "analytics"), "restricted")
    fails(ledger, disclose(subject, agreement, ["consumption"]), "restricted")
    fails(ledger, transfer(subject, "SE"), "restricted")
    fails(ledger, collect(subject, "orders", ["varmepumpe"]), "restricted")
    fails(
        ledger,
        simple("enter_competition", subject, competition="c", competition_ends_on="2026-09-01"),
        "restricted",
    )
    assert ledger.subject(subject)["restricted"] is True
    # storage goes on: bookkeeping under a legal obligation, and rectification (the remedy)
    ok(
        ledger,
        collect(
            subject,
            "invoice",
            {"number": "F-77123", "amount_dkk": "1234.50"},
            purpose="bookkeeping",
            legal_basis="legal_obligation",
            source="system",
        ),
    )
    ok(ledger, {"type": "rectify", "subject": subject, "category": "name", "value": "Bjørn Æbelø"})
    ok(ledger, simple("lift_restriction", subject))
    fails(ledger, simple("lift_restriction", subject), "invalid_command")
    ok(ledger, process(subject, "analytics"))
    ok(ledger, disclose(subject, agreement, ["consumption"]))
    ok(ledger, transfer(subject, "SE"))


# -- R10: disclosure only under a valid agreement --------------------------------------


def test_r10_unknown_agreement(ledger: Ledger) -> None:
    subject = customer(ledger)
    fails(ledger, disclose(subject, random_id(), ["consumption"]), "no_disclosure_agreement")
    other = customer(ledger)
    others = ok(ledger, agreement_for(other))["agreement"]
    fails(ledger, disclose(subject, others, ["consumption"]), "no_disclosure_agreement")
    ok(ledger, disclose(other, others, ["consumption"]))


def test_r10_revoked_agreement(ledger: Ledger) -> None:
    subject = customer(ledger)
    agreement = ok(ledger, agreement_for(subject))["agreement"]
    ok(ledger, disclose(subject, agreement, ["consumption"]))
    ok(ledger, simple("revoke_disclosure_agreement", subject, agreement=agreement))
    fails(ledger, disclose(subject, agreement, ["consumption"]), "no_disclosure_agreement")
    fails(
        ledger,
        simple("revoke_disclosure_agreement", subject, agreement=agreement),
        "invalid_command",
    )
    view = ledger.subject(subject)
    assert len(view["disclosures"]) == 1
    assert view["agreements"][0]["revoked_at"] is not None


def test_r10_expired_agreement_by_occurred_at(ledger: Ledger, clock: FixedClock) -> None:
    subject = customer(ledger)
    agreement = ok(ledger, agreement_for(subject, valid_until="2026-03-31"))["agreement"]
    clock.set(datetime(2026, 5, 1, 10, 0, tzinfo=UTC))
    # the last valid day, in Copenhagen time (22:30 UTC is 23:30 on the 31st there)
    ok(ledger, disclose(subject, agreement, ["consumption"], occurred_at="2026-03-31T21:30:00Z"))
    fails(
        ledger,
        disclose(subject, agreement, ["consumption"], occurred_at="2026-03-31T22:30:00Z"),
        "no_disclosure_agreement",
    )
    fails(
        ledger,
        disclose(subject, agreement, ["consumption"], occurred_at="2026-04-01T08:00:00+02:00"),
        "no_disclosure_agreement",
    )
    fails(ledger, disclose(subject, agreement, ["consumption"]), "no_disclosure_agreement")


def test_r10_agreement_must_come_before_the_disclosure(ledger: Ledger) -> None:
    subject = customer(ledger)
    agreement = ok(ledger, agreement_for(subject))["agreement"]
    late = (NOW - timedelta(days=1)).isoformat()
    fails(
        ledger,
        disclose(subject, agreement, ["consumption"], occurred_at=late),
        "no_disclosure_agreement",
    )


def test_r10_agreement_for_other_categories(ledger: Ledger) -> None:
    subject = customer(ledger)
    agreement = ok(ledger, agreement_for(subject, categories=["consumption", "delivery_point"]))[
        "agreement"
    ]
    fails(ledger, disclose(subject, agreement, ["health"]), "no_disclosure_agreement")
    fails(ledger, disclose(subject, agreement, ["consumption", "cpr"]), "no_disclosure_agreement")
    ok(ledger, disclose(subject, agreement, ["delivery_point", "consumption"]))
    ok(ledger, disclose(subject, agreement, ["consumption"]))


def test_unknown_agreement_on_revocation(ledger: Ledger) -> None:
    subject = customer(ledger)
    fails(
        ledger,
        simple("revoke_disclosure_agreement", subject, agreement=random_id()),
        "unknown_agreement",
    )


def test_r10_the_disclosures_report_checks_agreements_by_the_moment(ledger: Ledger) -> None:
    """The report re-checks each disclosure against its agreement as the ledger does, by
    instants: a revocation reported late, dated the morning of a disclosure made that
    afternoon, leaves the disclosure uncovered (the report once compared days only). The
    list is in time order across UTC offsets."""
    subject = customer(ledger)
    made = "2026-02-10T12:00:00+01:00"
    agreement = ok(ledger, agreement_for(subject, occurred_at=made))["agreement"]
    # 09:45 in Copenhagen written in UTC: after 09:30, though its text sorts before it
    times = ["2026-02-11T08:45:00+00:00", "2026-02-11T09:30:00+01:00", "2026-02-11T15:00:00+01:00"]
    for moment in times:
        ok(ledger, disclose(subject, agreement, ["consumption"], occurred_at=moment))
    revoke = {"type": "revoke_disclosure_agreement", "subject": subject, "agreement": agreement}
    ok(ledger, {**revoke, "occurred_at": "2026-02-11T10:00:00+01:00"})  # reported late
    report = produce(ledger.read_models, "disclosures", now=ledger.clock.now())
    assert [(d["disclosed_at"], d["covered"]) for d in report["disclosures"]] == [
        (times[1], True),
        (times[0], True),
        (times[2], False),
    ]
    assert report["uncovered"] == 1


# -- R11: nothing outside the EU -------------------------------------------------------


@pytest.mark.parametrize("country", ["US", "NO", "IS", "LI", "CH", "GB"])
def test_r11_transfer_outside_eu(ledger: Ledger, country: str) -> None:
    subject = customer(ledger)
    fails(ledger, transfer(subject, country), "transfer_outside_eu")
    recipient = {"kind": "general_practitioner", "name": "Lægehuset Ørsted", "country": country}
    fails(ledger, agreement_for(subject, recipient=recipient), "transfer_outside_eu")


def test_r11_inside_eu_is_allowed(ledger: Ledger) -> None:
    subject = customer(ledger)
    for country in ("DK", "SE", "DE", "FI"):
        ok(ledger, transfer(subject, country))
    recipient = {"kind": "public_authority", "name": "Skattestyrelsen", "country": "DK"}
    ok(ledger, agreement_for(subject, recipient=recipient))
    assert [t["country"] for t in ledger.subject(subject)["transfers"]] == ["DK", "SE", "DE", "FI"]


# -- R12: purposes added later need notice ----------------------------------------------

NEW_PURPOSE = """
[purposes.energy_advice]
label = "Energirådgivning"
legal_bases = ["consent", "legitimate_interest"]
categories = ["consumption", "email"]
introduced_in = "2025-01-01"
"""


def test_r12_new_purpose_needs_notice(
    tmp_path: Path, ledger_env: dict[str, str], clock: FixedClock
) -> None:
    path = tmp_path / "cekura-2025.toml"
    path.write_text(DEFAULT_POLICY.read_text(encoding="utf-8") + NEW_PURPOSE, encoding="utf-8")
    settings = Settings.from_env({**ledger_env, "LEDGER_POLICY": str(path)})
    with Ledger.open(settings, clock=clock) as ledger:
        purpose = ledger.policy.purposes["energy_advice"]
        assert ledger.policy.is_new_purpose(purpose)
        subject = register(ledger)
        other = register(ledger)
        use = collect(
            subject,
            "consumption",
            "3100 kWh",
            purpose="energy_advice",
            legal_basis="legitimate_interest",
        )
        fails(ledger, use, "purpose_not_notified")
        fails(ledger, process(subject, "energy_advice"), "purpose_not_notified")
        fails(ledger, consent(subject, "energy_advice"), "purpose_not_notified")
        # a notice of the policy in general, or one without the purpose, does not do
        ok(
            ledger,
            simple("notify_subject", subject, notice="privacy_policy", policy_version="2025"),
        )
        fails(ledger, use, "purpose_not_notified")
        fails(
            ledger,
            simple("notify_subject", subject, notice="new_purpose", policy_version="2025"),
            "invalid_command",
        )
        ok(
            ledger,
            simple(
                "notify_subject",
                subject,
                notice="new_purpose",
                policy_version="2025",
                purpose="energy_advice",
            ),
        )
        ok(ledger, use)
        ok(ledger, process(subject, "energy_advice"))
        ok(ledger, consent(subject, "energy_advice"))
        # another subject was not told
        fails(ledger, {**use, "subject": other}, "purpose_not_notified")
        # purposes of the first version need no notice
        ok(ledger, collect(other, "consumption", "2900 kWh"))


# -- R13: mandatory customer data -------------------------------------------------------


def test_r13_customer_needs_name_address_phone(ledger: Ledger) -> None:
    subject = register(ledger)
    start = simple("start_relationship", subject, relationship="customer")
    message = fails(ledger, start, "missing_mandatory_data")
    for category in ("name", "address", "phone"):
        assert category in message
    ok(ledger, collect(subject, "name", "Søren Ærø"))
    ok(ledger, collect(subject, "address", "Åboulevarden 3, 8000 Aarhus C"))
    message = fails(ledger, start, "missing_mandatory_data")
    assert "phone" in message
    assert "name" not in message.split(":")[-1]
    fails(
        ledger,
        simple("start_relationship", subject, relationship="subscription"),
        "missing_mandatory_data",
    )
    ok(ledger, collect(subject, "phone", "+45 40 50 60 70"))
    ok(ledger, start)
    fails(ledger, start, "invalid_command")  # already active
    ok(ledger, simple("start_relationship", subject, relationship="subscription"))
    ok(ledger, simple("end_relationship", subject, relationship="customer"))
    fails(ledger, simple("end_relationship", subject, relationship="customer"), "invalid_command")


def test_r13_identifiers_given_at_registration_count(ledger: Ledger) -> None:
    subject = register(ledger, identifiers={"phone": "20304050"})
    ok(ledger, collect(subject, "name", "Søren Ærø"))
    ok(ledger, collect(subject, "address", "Åboulevarden 3, 8000 Aarhus C"))
    ok(ledger, simple("start_relationship", subject, relationship="customer"))


# -- R14: data about others records who gave it ----------------------------------------


def test_r14_contact_person_records_who_gave_the_data(ledger: Ledger) -> None:
    provider = customer(ledger)
    contact = register(
        ledger,
        kind="contact_person",
        provided_by=provider,
        identifiers={"phone": "+45 31 32 33 34", "email": "kontakt.ærø@example.dk"},
    )
    ok(ledger, collect(contact, "name", "Kirstine Ødegård", source="third_party"))
    view = ledger.subject(contact)
    assert view["kind"] == "contact_person"
    assert view["provided_by"] == provider
    data = revealed(ledger, contact)
    assert {c: data[c]["source"] for c in ("phone", "email", "name")} == {
        "phone": "third_party",
        "email": "third_party",
        "name": "third_party",
    }
    assert data["email"]["value"] == "kontakt.ærø@example.dk"
    # the provider's own identifiers came from the provider
    assert revealed(ledger, provider)["phone"]["source"] == "subject"
    assert ledger.subject(provider)["provided_by"] is None


def test_r14_provider_must_be_a_known_subject(ledger: Ledger) -> None:
    before = state(ledger)
    result = ledger.execute(
        {
            "type": "register_subject",
            "kind": "contact_person",
            "purpose": CA,
            "legal_basis": "legitimate_interest",
            "provided_by": random_id(),
        }
    )
    assert result["error"]["code"] == "unknown_subject"
    assert state(ledger) == before


# -- R15: what is collected for bookkeeping is kept as bookkeeping ------------------------


def test_r15_data_collected_for_bookkeeping_is_kept_as_bookkeeping(ledger: Ledger) -> None:
    """Policy §7 keeps "betalingsoplysninger og lignende oplysninger som er nødvendige for at
    dokumentere vores bogføring" 5 years: payment details collected for bookkeeping go to
    the bookkeeping scope of their year and survive an erasure; the same category collected
    for customer administration is customer data and is shredded with it."""
    subject = customer(ledger)
    for_bookkeeping = {"purpose": "bookkeeping", "legal_basis": "legal_obligation"}
    ok(ledger, collect(subject, "payment_info", {"iban": "DK5000400440116243"}))
    ok(ledger, collect(subject, "customer_number", "K-3001", **for_bookkeeping))
    ok(ledger, collect(subject, "payment_info", {"iban": "DK5000400440116999"}, **for_bookkeeping))
    history = [e for e in ledger.history(subject) if e["type"] == "DataCollected"]
    scopes = {(e["details"]["category"], e["details"]["scope"]) for e in history}
    assert ("payment_info", "customer_data") in scopes
    assert ("payment_info", "bookkeeping:2026") in scopes
    assert ("customer_number", "bookkeeping:2026") in scopes
    ok(ledger, simple("end_relationship", subject, relationship="customer"))
    erased = ok(ledger, simple("erase", subject))
    assert erased["shredded"] == ["customer_data"]
    assert erased["retained"] == [
        {"scope": "bookkeeping:2026", "reason": "legal_obligation", "until": "2032-01-01"}
    ]
    shown = ledger.subject(subject, reveal=True, purpose="bookkeeping audit", actor="o")
    data = {item["category"]: item["value"] for item in shown["data"]}
    assert data["payment_info"] == {"iban": "DK5000400440116999"}
    assert data["customer_number"] == "K-3001"
    assert data["name"] is None


# -- R17: nothing after erasure but bookkeeping ------------------------------------------


def test_r17_erased_subject_takes_nothing_but_bookkeeping(ledger: Ledger) -> None:
    subject = customer(ledger)
    agreement = ok(ledger, agreement_for(subject))["agreement"]
    invoice = {"number": "F-77123", "amount_dkk": "1234.50"}
    bookkeeping = collect(
        subject,
        "invoice",
        invoice,
        purpose="bookkeeping",
        legal_basis="legal_obligation",
        source="system",
    )
    ok(ledger, bookkeeping)
    ok(ledger, simple("end_relationship", subject, relationship="customer"))
    result = ok(ledger, simple("erase", subject))
    assert result["shredded"] == ["customer_data"]
    assert result["retained"] == [
        {"scope": "bookkeeping:2026", "reason": "legal_obligation", "until": "2032-01-01"}
    ]
    view = ledger.subject(subject)
    assert view["status"] == "erased"
    rejected = [
        collect(subject, "name", "Bjørn Ærtebølle"),
        collect(subject, "orders", ["ovn"], legal_basis="legitimate_interest"),
        {"type": "rectify", "subject": subject, "category": "name", "value": "Bjørn Æ"},
        process(subject, CA),
        process(subject, "analytics"),
        simple("record_dialogue", subject),
        consent(subject, "marketing"),
        agreement_for(subject),
        disclose(subject, agreement, ["consumption"]),
        transfer(subject, "SE"),
        simple("start_relationship", subject, relationship="customer"),
        simple("enter_competition", subject, competition="c", competition_ends_on="2026-09-01"),
    ]
    for command in rejected:
        fails(ledger, command, "subject_erased")
    # bookkeeping under a legal obligation goes on
    ok(ledger, {**bookkeeping, "value": {"number": "F-77124", "amount_dkk": "-1234.50"}})
    ok(ledger, process(subject, "bookkeeping", categories=["invoice"]))
    data = revealed(ledger, subject)
    assert data["invoice"]["value"] == {"number": "F-77124", "amount_dkk": "-1234.50"}
    assert data["name"]["value"] is None
    assert data["name"]["erased"] is True
    assert data["phone"]["erased"] is True


# -- other error codes ----------------------------------------------------------------


def test_occurred_at_more_than_a_minute_ahead_is_invalid(ledger: Ledger) -> None:
    subject = register(ledger)
    ahead = (NOW + timedelta(seconds=61)).isoformat()
    message = fails(
        ledger, simple("record_dialogue", subject, occurred_at=ahead), "invalid_command"
    )
    assert "occurred_at" in message
    fails(
        ledger,
        collect(subject, "name", "Åge", occurred_at="2027-01-01T00:00:00+01:00"),
        "invalid_command",
    )
    ok(
        ledger,
        simple("record_dialogue", subject, occurred_at=(NOW + timedelta(seconds=59)).isoformat()),
    )
    ok(ledger, simple("record_dialogue", subject, occurred_at="2019-01-01T00:00:00+01:00"))
    history = ledger.history(subject)
    assert history[-1]["occurred_at"] == "2019-01-01T00:00:00+01:00"


def test_unknown_subject(ledger: Ledger) -> None:
    nobody = random_id()
    for command in (
        simple("record_dialogue", nobody),
        collect(nobody, "name", "Åge Ærø"),
        consent(nobody, "marketing"),
        simple("erase", nobody),
        simple("restrict", nobody),
        {"type": "rectify", "subject": nobody, "category": "name", "value": "Åge"},
    ):
        fails(ledger, command, "unknown_subject")
    with pytest.raises(Exception) as caught:
        ledger.subject(nobody)
    assert getattr(caught.value, "code", None) == "unknown_subject"


def test_requests_unknown_closed_and_late_extension(ledger: Ledger, clock: FixedClock) -> None:
    subject = customer(ledger)
    fails(ledger, simple("verify_identity", subject, request=random_id()), "unknown_request")
    fails(
        ledger,
        simple("extend_request", subject, request=random_id(), reason="r"),
        "unknown_request",
    )
    fails(
        ledger,
        simple("complete_request", subject, request=random_id(), outcome="fulfilled"),
        "unknown_request",
    )
    fails(ledger, simple("erase", subject, request=random_id()), "unknown_request")
    fails(
        ledger,
        {
            "type": "rectify",
            "subject": subject,
            "category": "name",
            "value": "Bjørn",
            "request": random_id(),
        },
        "unknown_request",
    )
    opened = ok(
        ledger,
        simple("open_request", subject, right="access", received_at="2025-03-17T12:00:00+01:00"),
    )
    assert opened["due"] == "2025-04-22"
    request = opened["request"]
    ok(ledger, simple("verify_identity", subject, request=request))
    # more than a month after receipt: too late to extend
    fails(
        ledger,
        simple("extend_request", subject, request=request, reason="many records"),
        "extension_too_late",
    )
    ok(ledger, simple("complete_request", subject, request=request, outcome="fulfilled"))
    for command in (
        simple("verify_identity", subject, request=request),
        simple("complete_request", subject, request=request, outcome="refused"),
        simple("extend_request", subject, request=request, reason="r"),
        simple("erase", subject, request=request),
    ):
        fails(ledger, command, "request_closed")
    # within the first month an extension is possible, once
    fresh = ok(ledger, simple("open_request", subject, right="erasure"))
    assert fresh["due"] == "2026-04-07"  # 2 April is Maundy Thursday, then Easter
    extended = ok(ledger, simple("extend_request", subject, request=fresh["request"], reason="x"))
    assert extended["due"] == "2026-06-02"
    fails(
        ledger,
        simple("extend_request", subject, request=fresh["request"], reason="again"),
        "extension_too_late",
    )


def test_unknown_hold(ledger: Ledger) -> None:
    subject = customer(ledger)
    fails(ledger, simple("release_legal_hold", subject, hold=random_id()), "unknown_hold")
    hold = ok(ledger, simple("place_legal_hold", subject, reason="tvist om faktura"))["hold"]
    ok(ledger, simple("release_legal_hold", subject, hold=hold))
    fails(ledger, simple("release_legal_hold", subject, hold=hold), "invalid_command")


def test_duplicate_subject_id(ledger: Ledger) -> None:
    chosen = random_id()
    assert register(ledger, subject=chosen) == chosen
    before = state(ledger)
    result = ledger.execute(
        {
            "type": "register_subject",
            "subject": chosen,
            "kind": "prospect",
            "purpose": CA,
            "legal_basis": "legitimate_interest",
            "identifiers": {"email": "ny@example.dk"},
        }
    )
    assert result["error"]["code"] == "duplicate"
    assert state(ledger) == before
    assert ledger.subject(chosen)["kind"] == "customer"
    assert ledger.find("email", "ny@example.dk") == []
    # without identifiers too, and twice in one batch
    fails(
        ledger,
        {
            "type": "register_subject",
            "subject": chosen,
            "kind": "prospect",
            "purpose": CA,
            "legal_basis": "legitimate_interest",
        },
        "duplicate",
    )
    fresh = random_id()
    twice = {
        "type": "register_subject",
        "subject": fresh,
        "kind": "customer",
        "purpose": CA,
        "legal_basis": "contract",
        "identifiers": {"email": "to.gange@example.dk"},
    }
    before = state(ledger)
    results = ledger.execute_many([twice, twice])
    assert results[1]["error"]["code"] == "duplicate"
    assert results[0]["rolled_back"] is True
    assert state(ledger) == before
    assert ledger.find("email", "to.gange@example.dk") == []


def test_idempotency_same_key_same_payload_returns_first_result(ledger: Ledger) -> None:
    command = {
        "type": "register_subject",
        "kind": "customer",
        "purpose": CA,
        "legal_basis": "contract",
        "identifiers": {"email": "idem.ærø@example.dk"},
        "idempotency_key": "crm-42",
    }
    first = ok(ledger, command)
    before = state(ledger)
    for _ in range(3):
        assert ledger.execute(dict(command)) == first
    assert state(ledger) == before
    assert ledger.find("email", "idem.ærø@example.dk") == [first["subject"]]
    subject = first["subject"]
    dialogue = simple("record_dialogue", subject, idempotency_key="call-7")
    ok(ledger, dialogue)
    before = state(ledger)
    assert ledger.execute(dialogue) == {"ok": True}
    assert state(ledger) == before
    assert [e["type"] for e in ledger.history(subject)].count("DialogueRecorded") == 1


def test_idempotency_same_key_other_payload_is_duplicate(ledger: Ledger) -> None:
    subject = register(ledger)
    ok(ledger, collect(subject, "name", "Åse Ærø", idempotency_key="k-1"))
    fails(ledger, collect(subject, "name", "Åse Ørum", idempotency_key="k-1"), "duplicate")
    fails(ledger, simple("record_dialogue", subject, idempotency_key="k-1"), "duplicate")
    assert revealed(ledger, subject)["name"]["value"] == "Åse Ærø"


def test_idempotency_receipts_confirm_nothing_once_their_week_is_over(
    ledger: Ledger, clock: FixedClock
) -> None:
    """A receipt's hash covers its command's personal values, so its key is the week's
    receipt key, which the sweeper destroys once the receipt is no longer honoured (at
    least 7 days, at most 14): after that no one, not even whoever holds the key store,
    can test a guessed CPR number against it (the never-shredded lookup key once could,
    also after the subject's erasure)."""
    from ledger.receipts import CommandReceipt, payload_hash, receipt_period

    subject = str(uuid.uuid4())
    registering = {
        "type": "register_subject",
        "subject": subject,
        "kind": "customer",
        "purpose": CA,
        "legal_basis": "contract",
        "identifiers": {"cpr": "0707614285"},
        "cpr_ground": "identification",
        "idempotency_key": "signup-1",
    }
    ok(ledger, registering)
    week = receipt_period(clock.now())
    receipt = ledger.app.repository.get(CommandReceipt.id_for("signup-1"))
    assert receipt.period == week
    assert receipt.payload_hash != payload_hash(registering, ledger.keystore.lookup_key())
    assert ledger.execute(registering)["ok"] is True  # a repeat within the week
    ok(ledger, simple("erase", subject))
    clock.set(clock.now() + timedelta(days=6))
    assert ledger.sweep()["receipt_keys_destroyed"] == 0
    assert ledger.execute(registering)["ok"] is True  # still honoured
    clock.set(clock.now() + timedelta(days=9))
    assert ledger.sweep()["receipt_keys_destroyed"] == 1
    assert ledger.keystore.receipt_key(week, create=False) is None
    assert fails(ledger, registering, "duplicate")


def test_receipts_stored_under_their_old_module_still_answer(
    ledger: Ledger, settings: Settings, clock: FixedClock
) -> None:
    """Receipts lived in `ledger.app` until the application was split into modules; the
    topics of the events already stored name it for good, and must still load."""
    command = {
        "type": "register_subject",
        "subject": str(uuid.uuid4()),
        "kind": "customer",
        "purpose": CA,
        "legal_basis": "contract",
        "idempotency_key": "moved-1",
    }
    first = ok(ledger, command)
    recorder: Any = ledger.app.recorder
    table = recorder.events_table_name
    mark = "?"
    if settings.database.backend == "postgres":
        mark, table = "%s", f'"{recorder.datastore.schema}"."{table}"'
    with recorder.datastore.transaction(commit=True) as cur:
        cur.execute(
            f"SELECT originator_id, topic, state FROM {table} WHERE topic LIKE 'ledger.receipts:%'"
        )
        rows = [(r["originator_id"], r["topic"], bytes(r["state"])) for r in cur.fetchall()]
        assert len(rows) == 1
        for originator, topic, state in rows:
            assert b'"ledger.receipts:CommandReceipt"' in state
            cur.execute(
                f"UPDATE {table} SET topic = {mark}, state = {mark} WHERE originator_id = {mark}",
                (
                    topic.replace("ledger.receipts:", "ledger.app:"),
                    state.replace(b'"ledger.receipts:', b'"ledger.app:'),
                    originator,
                ),
            )
    before = ledger.max_position()
    with Ledger.open(settings, clock=clock) as fresh:  # nothing cached: read from the store
        assert fresh.execute(command) == first
        assert fresh.max_position() == before


def test_the_old_receipt_topic_is_registered_by_the_receipts_module_itself() -> None:
    """Not only found because `ledger.app` happens to import the class: the alias holds in a
    process that has imported nothing else of the ledger."""
    script = (
        "import sys\n"
        "from eventsourcing.utils import resolve_topic\n"
        "from ledger.receipts import CommandReceipt\n"
        "found = resolve_topic('ledger.app:CommandReceipt.Received')\n"
        "assert found is CommandReceipt.Received, found\n"
        "assert 'ledger.app' not in sys.modules\n"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr


def test_idempotency_key_of_a_rejected_command_is_not_used_up(ledger: Ledger) -> None:
    subject = register(ledger)
    command = collect(subject, "health", "astma", idempotency_key="k-2")
    fails(ledger, command, "explicit_consent_required")
    ok(ledger, consent(subject, CA, explicit=True, categories=["health"]))
    ok(ledger, command)
    before = state(ledger)
    assert ledger.execute(command) == {"ok": True}
    assert state(ledger) == before


def test_rejections_are_reported_in_json_without_values(ledger: Ledger) -> None:
    subject = register(ledger)
    result = ledger.execute(collect(subject, "health", "Hjertesygdom hos Ærø", source="observed"))
    text = json.dumps(result, ensure_ascii=False)
    assert "Hjertesygdom" not in text
    assert set(result) == {"ok", "error"}
    assert set(result["error"]) == {"code", "message"}


def test_erasure_destroys_a_disclosure_recipients_name(ledger: Ledger) -> None:
    """The recipient's name is the only customer_data value: erase must still shred it."""
    subject = str(uuid.uuid4())
    ok(
        ledger,
        {
            "type": "register_subject",
            "subject": subject,
            "kind": "contact_person",
            "purpose": "customer_administration",
            "legal_basis": "contract",
        },
    )
    ok(
        ledger,
        {
            "type": "agree_disclosure",
            "subject": subject,
            "recipient": {"kind": "family_member", "name": "Ingrid Hansen", "country": "DK"},
            "categories": ["name"],
            "purpose": "customer_administration",
        },
    )
    result = ok(ledger, {"type": "erase", "subject": subject})
    assert result["shredded"] == ["customer_data"]
    view = ledger.subject(subject, reveal=True, purpose="check", actor="tests")
    assert view["agreements"][0]["recipient"]["name"] is None
    assert ledger.keystore.keys(subject) == {}
