"""The subject's own copy: the Art. 15 access report and the Art. 20 portable export.

One seeded subject (identifiers, name, address, health under explicit consent, an invoice,
marketing, a disclosure agreement and a disclosure, a transfer, a request, an officer's
reveal) is exported and checked field by field. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from ledger.clock import FixedClock, parse_instant
from ledger.exports import PORTABLE_FORMAT, render_html
from ledger.facade import Ledger

CA = "customer_administration"
EXPORTED_AT = "2026-03-02T11:00:00+01:00"

# category -> (value, purpose, legal basis, source)
ITEMS: dict[str, tuple[Any, str, str, str]] = {
    "email": ("anna@example.dk", CA, "contract", "subject"),
    "phone": ("+4521212121", CA, "contract", "subject"),
    "customer_number": ("K-100200", CA, "contract", "subject"),
    "name": ("Anna Møller", CA, "contract", "subject"),
    "address": ("Amagerbrogade 1, 2300 København S", CA, "contract", "subject"),
    "health": ("Diabetes; needs notice before a meter visit", CA, "contract", "subject"),
    "correspondence": ("Kunden skrev: <script>alert(1)</script> & tak", CA, "contract", "subject"),
    "orders": (["varmepumpe", "service"], CA, "contract", "observed"),
    "marketing_profile": ({"segment": "family", "score": 7}, "marketing", "consent", "observed"),
    "invoice": (
        {"number": "F-2025-17", "amount_dkk": "1499.00"},
        "bookkeeping",
        "legal_obligation",
        "system",
    ),
    "payment_record": ({"paid": "2025-10-01"}, "bookkeeping", "legal_obligation", "observed"),
    "power_of_attorney": ("Søn: Peter Møller", CA, "contract", "third_party"),
    "digital_behaviour": ({"logins": 12}, "analytics", "legitimate_interest", "observed"),
    "consumption": ({"kwh_2025": 4100}, CA, "contract", "derived"),
}
PORTABLE = [
    "email",
    "phone",
    "customer_number",
    "name",
    "address",
    "health",
    "correspondence",
    "orders",
    "marketing_profile",
]
NOT_PORTABLE = {
    "invoice": "legal_obligation and system",
    "payment_record": "legal_obligation",
    "power_of_attorney": "third_party",
    "digital_behaviour": "legitimate_interest",
    "consumption": "derived",
}
SCOPES = {
    "customer_data": "2026-03-31",  # 2 months after the relationship ended on 31 January
    "marketing": "2026-09-20",  # 1 year after the marketing registration
    "bookkeeping:2025": "2031-01-01",
}


@dataclass
class Seeded:
    subject: str
    agreement: str
    request: str
    officer_view_at: str


def ok(ledger: Ledger, command: dict[str, Any]) -> dict[str, Any]:
    result = ledger.execute(command)
    assert result.get("ok") is True, (command["type"], result)
    return result


def seed(ledger: Ledger, clock: FixedClock) -> Seeded:
    clock.set(parse_instant("2026-03-02T10:00:00+01:00"))
    t0 = "2025-09-01T10:00:00+02:00"
    subject = ok(
        ledger,
        {
            "type": "register_subject",
            "kind": "customer",
            "purpose": CA,
            "legal_basis": "contract",
            "identifiers": {k: ITEMS[k][0] for k in ("email", "phone", "customer_number")},
            "occurred_at": t0,
        },
    )["subject"]
    ok(
        ledger,
        {
            "type": "give_consent",
            "subject": subject,
            "purpose": CA,
            "notice_version": "2018-05-25",
            "method": "paper",
            "explicit": True,
            "categories": ["health"],
            "occurred_at": t0,
        },
    )
    ok(
        ledger,
        {
            "type": "give_consent",
            "subject": subject,
            "purpose": "marketing",
            "notice_version": "2018-05-25",
            "method": "web_form",
            "channels": ["email"],
            "occurred_at": t0,
        },
    )
    for category, (value, purpose, basis, source) in ITEMS.items():
        if category in ("email", "phone", "customer_number"):
            continue
        when = "2025-09-20T10:00:00+02:00" if category == "marketing_profile" else t0
        ok(
            ledger,
            {
                "type": "collect",
                "subject": subject,
                "category": category,
                "value": value,
                "purpose": purpose,
                "legal_basis": basis,
                "source": source,
                "occurred_at": when,
            },
        )
        if category == "address":
            ok(
                ledger,
                {
                    "type": "start_relationship",
                    "subject": subject,
                    "relationship": "customer",
                    "occurred_at": t0,
                },
            )
    agreement = ok(
        ledger,
        {
            "type": "agree_disclosure",
            "subject": subject,
            "recipient": {
                "kind": "general_practitioner",
                "name": "Lægehuset <Amager>",
                "country": "DK",
            },
            "categories": ["health"],
            "purpose": CA,
            "valid_until": "2026-12-31",
            "occurred_at": "2025-10-01T10:00:00+02:00",
        },
    )["agreement"]
    ok(
        ledger,
        {
            "type": "disclose",
            "subject": subject,
            "agreement": agreement,
            "categories": ["health"],
            "occurred_at": "2025-10-02T10:00:00+02:00",
        },
    )
    ok(
        ledger,
        {
            "type": "transfer",
            "subject": subject,
            "categories": ["name", "address"],
            "country": "SE",
            "recipient": "Nordisk Måleraflæsning AB",
            "occurred_at": "2025-10-03T10:00:00+02:00",
        },
    )
    ok(
        ledger,
        {
            "type": "end_relationship",
            "subject": subject,
            "relationship": "customer",
            "occurred_at": "2026-01-31T12:00:00+01:00",
        },
    )
    request = ok(
        ledger,
        {
            "type": "open_request",
            "subject": subject,
            "right": "access",
            "received_at": "2026-02-27T09:00:00+01:00",
        },
    )["request"]
    clock.set(parse_instant("2026-03-01T09:30:00+01:00"))
    ledger.subject(subject, reveal=True, purpose="complaint handling", actor="officer-anne")
    clock.set(parse_instant(EXPORTED_AT))
    return Seeded(subject, agreement, request, "2026-03-01T09:30:00+01:00")


def test_access_report_has_every_article_15_item(ledger: Ledger, clock: FixedClock) -> None:
    seeded = seed(ledger, clock)
    report = ledger.export(seeded.subject, actor="dpo")

    assert report["generated_at"] == EXPORTED_AT
    assert report["controller"] == {
        "name": "CEKURA A/S",
        "cvr": "34046352",
        "address": "Amagerbrogade 41, 1., 2300 København S, Danmark",
        "email": "mail@cekura.dk",
        "phone": "+45 32 31 60 50",
    }
    assert (report["subject"], report["kind"], report["status"]) == (
        seeded.subject,
        "customer",
        "active",
    )

    # (a) purposes, each with its legal bases
    purposes = {p["purpose"]: p for p in report["purposes"]}
    assert {name: p["legal_bases"] for name, p in purposes.items()} == {
        "analytics": ["legitimate_interest"],
        "bookkeeping": ["legal_obligation"],
        "customer_administration": ["contract"],
        "marketing": ["consent"],
    }
    catalogue = ledger.policy.purposes
    for name, purpose in purposes.items():
        assert purpose["description"] == catalogue[name].label

    # (b) categories, the sensitive one flagged
    categories = {c["category"]: c for c in report["categories"]}
    assert set(categories) == set(ITEMS)
    assert [name for name, c in categories.items() if c["sensitive"]] == ["health"]
    assert categories["health"]["description"] == "Helbredsmæssige oplysninger"
    assert categories["invoice"]["description"] == "Faktura"

    # (c) recipients: the agreement (its recipient's name opened), the disclosure, the transfer
    recipients = report["recipients"]
    assert recipients["outside_eu"] is False
    assert recipients["agreements"] == [
        {
            "agreement": seeded.agreement,
            "recipient": {
                "kind": "general_practitioner",
                "name": "Lægehuset <Amager>",
                "country": "DK",
            },
            "categories": ["health"],
            "purpose": CA,
            "valid_until": "2026-12-31",
            "agreed_at": "2025-10-01T10:00:00+02:00",
            "revoked_at": None,
        }
    ]
    assert recipients["disclosures"] == [
        {
            "agreement": seeded.agreement,
            "categories": ["health"],
            "recipient_kind": "general_practitioner",
            "country": "DK",
            "disclosed_at": "2025-10-02T10:00:00+02:00",
        }
    ]
    assert recipients["transfers"] == [
        {
            "categories": ["address", "name"],
            "country": "SE",
            "recipient": "Nordisk Måleraflæsning AB",
            "transferred_at": "2025-10-03T10:00:00+02:00",
        }
    ]

    # (d) retention: every scope with its rule and deadline
    retention = {r["scope"]: r for r in report["retention"]}
    assert {scope: r["deadline"] for scope, r in retention.items()} == SCOPES
    for scope, entry in retention.items():
        assert entry["rule"] == ledger.policy.retention[scope.split(":")[0]].description
        assert entry["held"] is False
        assert entry["shredded_at"] is None

    # (e) rights, (f) complaint to Datatilsynet, (g) sources, (h) automated decisions
    assert [r["right"] for r in report["rights"]] == [
        "access",
        "rectification",
        "erasure",
        "restriction",
        "objection",
        "portability",
        "withdraw_consent",
    ]
    articles = {r["right"]: r["article"] for r in report["rights"]}
    assert articles["erasure"] == "Art. 17" and articles["portability"] == "Art. 20"
    assert all(r["meaning"] for r in report["rights"])
    assert report["complaint"]["authority"].startswith("Datatilsynet")
    assert "Carl Jacobsens Vej 35" in report["complaint"]["authority"]
    assert "Kundeservicechef" in report["complaint"]["controller_contact"]
    assert {s["category"]: s["source"] for s in report["sources"]} == {
        category: source for category, (_, _, _, source) in ITEMS.items()
    }
    assert report["automated_decisions"]["used"] is False
    assert "automated" in report["automated_decisions"]["explanation"]


def test_access_report_holds_the_data_and_who_viewed_it(ledger: Ledger, clock: FixedClock) -> None:
    seeded = seed(ledger, clock)
    before = [e for e in ledger.history(seeded.subject) if e["type"] == "DataViewed"]
    assert len(before) == 1
    report = ledger.export(seeded.subject, actor="dpo")

    data = {d["category"]: d for d in report["data"]}
    assert set(data) == set(ITEMS)
    for category, (value, purpose, basis, source) in ITEMS.items():
        item = data[category]
        assert item["value"] == value, category
        assert item["erased"] is False
        assert (item["purpose"], item["legal_basis"], item["source"]) == (purpose, basis, source)
    assert data["invoice"]["scope"] == "bookkeeping:2025"
    assert data["marketing_profile"]["collected_at"] == "2025-09-20T10:00:00+02:00"

    consents = {c["purpose"]: c for c in report["consents"]}
    assert consents[CA]["explicit"] is True and consents[CA]["categories"] == ["health"]
    assert consents["marketing"]["channels"] == ["email"] and consents["marketing"]["active"]
    assert report["objections"] == [] and report["restricted"] is False
    assert report["requests"] == [
        {
            "request": seeded.request,
            "right": "access",
            "received_at": "2026-02-27T09:00:00+01:00",
            "due": "2026-03-27",
            "status": "open",
            "extended": False,
            "outcome": None,
            "completed_at": None,
        }
    ]

    # who viewed, when and why: the officer's reveal, then this export itself
    views = report["views"]
    assert [(v["actor"], v["purpose"], v["viewed_at"]) for v in views] == [
        ("officer-anne", "complaint handling", seeded.officer_view_at),
        ("dpo", "access request (Art. 15)", EXPORTED_AT),
    ]
    for view in views:
        assert view["categories"] == sorted(ITEMS)
        assert view["recorded_at"]

    # exporting recorded exactly one DataViewed event, by the exporter
    after = [e for e in ledger.history(seeded.subject) if e["type"] == "DataViewed"]
    assert len(after) == 2
    assert after[-1]["actor"] == "dpo"
    assert after[-1]["occurred_at"] == EXPORTED_AT
    assert after[-1]["details"]["purpose"] == "access request (Art. 15)"
    assert "value" not in json.dumps(after[-1]["details"])


def test_access_report_holds_earlier_values_still_held(ledger: Ledger, clock: FixedClock) -> None:
    """The Art. 15 copy once held only the newest value of each category: a previous
    address, or a name kept for bookkeeping after an erasure, exist and can be read, and
    were left out (the report even said the name was erased)."""
    clock.set(parse_instant("2025-03-01T10:00:00+01:00"))
    subject = ok(
        ledger,
        {"type": "register_subject", "kind": "customer", "purpose": CA, "legal_basis": "contract"},
    )["subject"]

    def collect(category: str, value: str, when: str, purpose: str = CA) -> None:
        basis = "legal_obligation" if purpose == "bookkeeping" else "contract"
        command = {
            "type": "collect",
            "subject": subject,
            "category": category,
            "value": value,
            "purpose": purpose,
            "legal_basis": basis,
            "source": "subject",
            "occurred_at": when,
        }
        ok(ledger, command)

    collect("name", "Bo Bogholder", "2025-01-10T09:00:00+01:00", purpose="bookkeeping")
    collect("name", "Bo Kunde", "2025-01-11T09:00:00+01:00")
    collect("address", "Gammel Vej 1, 2300 København S", "2025-01-11T09:00:00+01:00")
    collect("address", "Ny Vej 2, 2300 København S", "2025-02-01T09:00:00+01:00")

    report = ledger.export(subject, actor="dpo")
    assert {d["category"]: d["value"] for d in report["data"]} == {
        "name": "Bo Kunde",
        "address": "Ny Vej 2, 2300 København S",
    }
    assert [(e["category"], e["value"], e["scope"]) for e in report["earlier_values"]] == [
        ("name", "Bo Bogholder", "bookkeeping:2025"),
        ("address", "Gammel Vej 1, 2300 København S", "customer_data"),
    ]
    assert report["earlier_values"][0]["purpose"] == "bookkeeping"
    assert report["earlier_values"][0]["recorded_as"] == "collected"

    ok(ledger, {"type": "erase", "subject": subject, "occurred_at": "2025-02-15T09:00:00+01:00"})
    after = ledger.export(subject, actor="dpo")
    assert {d["category"]: d["erased"] for d in after["data"]} == {"name": True, "address": True}
    # what the erasure kept is still there to be read, and the copy says so
    assert [(e["category"], e["value"]) for e in after["earlier_values"]] == [
        ("name", "Bo Bogholder")
    ]
    page = ledger.export(subject, actor="dpo")
    assert "Bo Bogholder" in render_html(page) and "Gammel Vej" not in render_html(page)


def test_access_report_reads_as_a_document(ledger: Ledger, clock: FixedClock) -> None:
    """The HTML answer once was the JSON drawn as tables (`["consent"]`, `True`, keys as
    headings), and a purpose only consented to (a newsletter) showed no legal basis."""
    clock.set(parse_instant("2025-03-01T10:00:00+01:00"))
    subject = ok(
        ledger,
        {"type": "register_subject", "kind": "customer", "purpose": CA, "legal_basis": "contract"},
    )["subject"]
    consent = {
        "type": "give_consent",
        "subject": subject,
        "purpose": "marketing",
        "notice_version": "2018-05-25",
        "method": "web_form",
        "channels": ["email", "sms"],
    }
    ok(ledger, consent)
    report = ledger.export(subject, actor="dpo")
    bases = {p["purpose"]: p["legal_bases"] for p in report["purposes"]}
    assert bases == {CA: ["contract"], "marketing": ["consent"]}
    page = render_html(report)
    for heading in ("Your consents", "Why we process your data", "Your rights"):
        assert f"<h2>{heading}" in page, heading
    assert "<td>email, sms</td>" in page and "<td>yes</td>" in page
    assert "True" not in page and "False" not in page and "[&quot;" not in page


def test_portable_export(ledger: Ledger, clock: FixedClock) -> None:
    seeded = seed(ledger, clock)
    exported = ledger.export(seeded.subject, portable=True, actor="dpo")
    assert set(exported) == {"format", "generated_at", "controller", "subject", "data"}
    assert exported["format"] == PORTABLE_FORMAT == "cekura-ledger-portable/1"
    assert exported["generated_at"] == EXPORTED_AT
    assert exported["controller"] == "CEKURA A/S"
    assert exported["subject"] == seeded.subject
    # only what the subject gave or we observed, on consent or contract
    assert [d["category"] for d in exported["data"]] == PORTABLE
    for item in exported["data"]:
        value, purpose, basis, source = ITEMS[item["category"]]
        assert item == {
            "category": item["category"],
            "value": value,
            "collected_at": item["collected_at"],
            "source": source,
            "legal_basis": basis,
            "purpose": purpose,
        }
        assert source in ("subject", "observed") and basis in ("consent", "contract")
    assert not set(NOT_PORTABLE) & {d["category"] for d in exported["data"]}
    text = json.dumps(exported, ensure_ascii=False)
    for category in NOT_PORTABLE:
        assert json.dumps(ITEMS[category][0], ensure_ascii=False) not in text
    # the export is itself a recorded view
    viewed = [e for e in ledger.history(seeded.subject) if e["type"] == "DataViewed"][-1]
    assert viewed["details"]["purpose"] == "data portability (Art. 20)"
    assert viewed["actor"] == "dpo"


def test_a_shredded_value_is_not_exported(ledger: Ledger, clock: FixedClock) -> None:
    seeded = seed(ledger, clock)
    ledger.sweep(parse_instant("2026-09-20T00:00:00+02:00"))  # customer_data and marketing
    portable = ledger.export(seeded.subject, portable=True)
    assert portable["data"] == []
    report = ledger.export(seeded.subject)
    data = {d["category"]: d for d in report["data"]}
    assert data["name"]["value"] is None and data["name"]["erased"] is True
    assert data["marketing_profile"]["erased"] is True
    assert data["invoice"]["value"] == ITEMS["invoice"][0]
    shredded = {r["scope"]: r["shredded_at"] for r in report["retention"]}
    assert shredded["customer_data"] == shredded["marketing"] == "2026-09-20T00:00:00+02:00"
    assert shredded["bookkeeping:2025"] is None
    assert report["status"] == "partially_erased"
    # the recipient's name was sealed in customer_data: gone too
    assert report["recipients"]["agreements"][0]["recipient"]["name"] is None


class _Structure(HTMLParser):
    """Checks that every element is closed in order (void elements aside)."""

    VOID = frozenset({"meta", "br", "hr", "img", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.problems.append("a script element")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_export_through_the_cli(
    ledger: Ledger, clock: FixedClock, cli_env: dict[str, str]
) -> None:
    seeded = seed(ledger, clock)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger",
            "subject",
            "export",
            seeded.subject,
            "--format",
            "html",
            "--actor",
            "dpo-cli",
        ],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    page = done.stdout
    assert page.lower().startswith("<!doctype html>")
    assert page.rstrip().endswith("</html>")
    assert "CEKURA A/S" in page and "34046352" in page
    # values are escaped: nothing of a value becomes markup
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; tak" in page
    assert "Lægehuset &lt;Amager&gt;" in page
    parser = _Structure()
    parser.feed(page)
    parser.close()
    assert parser.problems == []
    assert parser.stack == []
    text = "".join(parser.text)
    assert "Kunden skrev: <script>alert(1)</script> & tak" in text  # as text, once unescaped
    assert "Datatilsynet" in text and "Anna Møller" in text
    viewed = [e for e in ledger.history(seeded.subject) if e["type"] == "DataViewed"][-1]
    assert viewed["actor"] == "dpo-cli"
    assert viewed["details"]["purpose"] == "access request (Art. 15)"


def test_portable_json_through_the_cli(
    ledger: Ledger, clock: FixedClock, cli_env: dict[str, str]
) -> None:
    seeded = seed(ledger, clock)
    done = subprocess.run(
        [sys.executable, "-m", "ledger", "subject", "export", seeded.subject, "--portable"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    exported = json.loads(done.stdout)
    assert exported["format"] == "cekura-ledger-portable/1"
    assert [d["category"] for d in exported["data"]] == PORTABLE
    assert {d["category"]: d["value"] for d in exported["data"]} == {
        c: ITEMS[c][0] for c in PORTABLE
    }
