"""`disclosures`: every disclosure with the agreement it relied on, and every transfer.

Each disclosure is checked again against its agreement (made before, not revoked, still
valid that day, covering the categories): the ledger refuses any other (R10), so a "no"
here points at a late-reported event or a problem worth a look.
"""

from __future__ import annotations

from typing import Any

import orjson

from ledger.clock import parse_instant
from ledger.reports import register_report
from ledger.reports.model import Report, ReportContext, Section, Table
from ledger.reports.text import RECIPIENT_KINDS, day_of, plural


def _covered(disclosure: dict[str, Any], agreement: dict[str, Any] | None) -> bool:
    """As the ledger checks it (R10): agreed before the moment of the disclosure and not
    revoked before it (instants, not days), valid on its day in Copenhagen, covering it."""
    if agreement is None:
        return False
    at = parse_instant(disclosure["disclosed_at"])
    if parse_instant(agreement["agreed_at"]) > at:
        return False
    if agreement["revoked_at"] and parse_instant(agreement["revoked_at"]) <= at:
        return False
    if agreement["valid_until"] and agreement["valid_until"] < day_of(disclosure["disclosed_at"]):
        return False
    return set(disclosure["categories"]) <= set(agreement["categories"])


@register_report(
    "disclosures",
    title="Disclosures and transfers",
    description="every disclosure with the agreement it relied on; every transfer",
)
def disclosures(ctx: ReportContext) -> Report:
    policy = ctx.policy
    today = ctx.today.isoformat()
    agreements: dict[str, dict[str, Any]] = {}
    status = {"total": 0, "in_force": 0, "revoked": 0, "expired": 0}
    for row in ctx.query(
        "SELECT a.agreement, s.subject, a.recipient_kind, a.country, a.categories, a.purpose, "
        "a.valid_until, a.agreed_at, a.revoked_at FROM rm_agreements a "
        "JOIN rm_subjects s ON s.sid = a.sid"
    ):
        row["categories"] = orjson.loads(row["categories"])
        agreements[row["agreement"]] = row
        status["total"] += 1
        if row["revoked_at"]:
            status["revoked"] += 1
        elif row["valid_until"] and row["valid_until"] < today:
            status["expired"] += 1
        else:
            status["in_force"] += 1

    found: list[dict[str, Any]] = []
    for row in ctx.query(
        "SELECT d.position, s.subject, d.agreement, d.categories, d.recipient_kind, d.country, "
        "d.disclosed_at, d.actor FROM rm_disclosures d JOIN rm_subjects s ON s.sid = d.sid "
        "ORDER BY d.position"
    ):
        row["categories"] = orjson.loads(row["categories"])
        agreement = agreements.get(row["agreement"])
        found.append(
            {
                "subject": row["subject"],
                "disclosed_at": row["disclosed_at"],
                "categories": row["categories"],
                "recipient_kind": row["recipient_kind"],
                "country": row["country"],
                "actor": row["actor"],
                "agreement": None
                if agreement is None
                else {
                    "agreement": agreement["agreement"],
                    "purpose": agreement["purpose"],
                    "categories": agreement["categories"],
                    "agreed_at": agreement["agreed_at"],
                    "valid_until": agreement["valid_until"],
                    "revoked_at": agreement["revoked_at"],
                },
                "covered": _covered(row, agreement),
            }
        )
    transfers = [
        {
            "subject": row["subject"],
            "transferred_at": row["transferred_at"],
            "categories": orjson.loads(row["categories"]),
            "country": row["country"],
            "recipient": row["recipient"],
            "inside_eu": row["country"] in policy.eu_countries,
        }
        for row in ctx.query(
            "SELECT s.subject, t.transferred_at, t.categories, t.country, t.recipient "
            "FROM rm_transfers t JOIN rm_subjects s ON s.sid = t.sid ORDER BY t.position"
        )
    ]
    # in time order: as instants (the text of times with different offsets sorts wrongly)
    found.sort(key=lambda d: parse_instant(d["disclosed_at"]))
    transfers.sort(key=lambda t: parse_instant(t["transferred_at"]))
    uncovered = sum(1 for d in found if not d["covered"])
    outside = sum(1 for t in transfers if not t["inside_eu"])
    data = {
        "disclosures": found,
        "uncovered": uncovered,
        "agreements": status,
        "transfers": transfers,
        "transfers_outside_eu": outside,
    }
    sections = [
        Section(
            "Disclosures",
            paragraphs=[
                "Every disclosure of personal data to a recipient, with the agreement the "
                "person made in advance that allowed it (privacy policy §5). 'Covered' says "
                "whether the agreement was made before the disclosure, was not revoked or "
                "expired on that day, and names every category disclosed."
            ],
            tables=[
                Table(
                    [
                        "Date",
                        "Subject",
                        "Recipient",
                        "Country",
                        "Categories disclosed",
                        "Agreement",
                        "Agreed",
                        "Valid until",
                        "Revoked",
                        "Agreed categories",
                        "Covered",
                    ],
                    [
                        [
                            day_of(d["disclosed_at"]),
                            d["subject"],
                            RECIPIENT_KINDS.get(d["recipient_kind"], d["recipient_kind"]),
                            d["country"],
                            ", ".join(d["categories"]),
                            (d["agreement"] or {}).get("agreement", "(unknown)"),
                            day_of((d["agreement"] or {}).get("agreed_at")),
                            (d["agreement"] or {}).get("valid_until") or "",
                            day_of((d["agreement"] or {}).get("revoked_at")),
                            ", ".join((d["agreement"] or {}).get("categories", [])),
                            "yes" if d["covered"] else "NO",
                        ]
                        for d in found
                    ],
                    empty="No disclosures were recorded.",
                )
            ],
        ),
        Section(
            "Disclosure agreements",
            facts=[
                ("Agreements made", f"{status['total']:,}"),
                ("In force today", f"{status['in_force']:,}"),
                ("Revoked by the person", f"{status['revoked']:,}"),
                ("Expired", f"{status['expired']:,}"),
            ],
        ),
        Section(
            "Transfers",
            paragraphs=[
                "Every transfer of personal data to another organisation (carriers, "
                "processors). The policy allows transfers only inside the EU (§6)."
            ],
            tables=[
                Table(
                    ["Date", "Subject", "Recipient", "Country", "Categories", "Inside the EU"],
                    [
                        [
                            day_of(t["transferred_at"]),
                            t["subject"],
                            t["recipient"],
                            t["country"],
                            ", ".join(t["categories"]),
                            "yes" if t["inside_eu"] else "NO",
                        ]
                        for t in transfers
                    ],
                    empty="No transfers were recorded.",
                )
            ],
        ),
    ]
    verdict = (
        "every one covered by an agreement"
        if uncovered == 0
        else f"{plural(uncovered, 'disclosure')} NOT covered by an agreement"
    )
    return Report(
        name="disclosures",
        title=f"Disclosures and transfers — {policy.controller.name}",
        summary=(
            f"{plural(len(found), 'disclosure')} of personal data, {verdict}; "
            f"{plural(len(transfers), 'transfer')}, "
            f"{'none' if outside == 0 else plural(outside, 'transfer')} outside the EU."
        ),
        data=data,
        sections=sections,
    )
