"""`ropa`: the record of processing activities (GDPR Art. 30(1)).

What the policy catalogue declares (controller, purposes, legal bases, categories of
subjects and data, recipients, transfers, retention, security), each beside what the
ledger has actually recorded, so a gap between promise and practice shows at a glance.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ledger.domain.subject import RECIPIENT_KINDS
from ledger.reports import register_report
from ledger.reports.model import Report, ReportContext, Section, Table
from ledger.reports.text import (
    LEGAL_BASES,
    SUBJECT_KINDS,
    category_label,
    period,
    plural,
    purpose_label,
    yes_no,
)
from ledger.reports.text import (
    RECIPIENT_KINDS as RECIPIENT_LABELS,
)


@register_report(
    "ropa",
    title="Record of processing activities (GDPR Art. 30)",
    description="declared purposes, data, recipients, retention and security beside counts",
)
def ropa(ctx: ReportContext) -> Report:
    policy = ctx.policy
    q = ctx.query

    collected: dict[tuple[str, str], int] = defaultdict(int)
    rectified: dict[str, int] = defaultdict(int)
    for row in q("SELECT metric, a, b, n FROM rm_counters"):
        if row["metric"] == "collected":
            collected[(row["a"], row["b"])] += int(row["n"])
        elif row["metric"] == "rectified":
            rectified[row["b"]] += int(row["n"])
    on_file: dict[tuple[str, str], int] = defaultdict(int)
    erased: dict[str, int] = defaultdict(int)
    for row in q(
        "SELECT purpose, category, erased, COUNT(*) AS n FROM rm_data_items "
        "GROUP BY purpose, category, erased"
    ):
        if row["erased"]:
            erased[row["category"]] += int(row["n"])
        else:
            on_file[(row["purpose"], row["category"])] += int(row["n"])
    subjects_by_purpose = {
        r["purpose"]: int(r["n"])
        for r in q(
            "SELECT d.purpose, COUNT(DISTINCT d.sid) AS n FROM rm_data_items d "
            "WHERE NOT d.erased GROUP BY d.purpose"
        )
    }
    acts = {
        r["purpose"]: int(r["n"])
        for r in q("SELECT purpose, COUNT(*) AS n FROM rm_processing GROUP BY purpose")
    }
    kinds = {
        (r["kind"], r["status"]): int(r["n"])
        for r in q("SELECT kind, status, COUNT(*) AS n FROM rm_subjects GROUP BY kind, status")
    }

    purposes: list[dict[str, Any]] = []
    for name, purpose in policy.purposes.items():
        purposes.append(
            {
                "purpose": name,
                "label": purpose.label,
                "legal_bases": list(purpose.legal_bases),
                "categories": sorted(purpose.categories),
                "introduced_in": purpose.introduced_in.isoformat(),
                "direct_marketing": purpose.direct_marketing,
                "consent_channels": sorted(purpose.consent_channels),
                "subjects_with_data": subjects_by_purpose.get(name, 0),
                "collections": sum(n for (p, _), n in collected.items() if p == name),
                "processing_acts": acts.get(name, 0),
            }
        )
    undeclared = sorted(
        {p for p, _ in collected} - set(policy.purposes) | set(acts) - set(policy.purposes)
    )

    subject_rows: list[dict[str, Any]] = []
    for kind, label in SUBJECT_KINDS.items():
        total = sum(n for (k, _), n in kinds.items() if k == kind)
        subject_rows.append(
            {
                "kind": kind,
                "label": label,
                "registered": total,
                "erased": kinds.get((kind, "erased"), 0),
                "partially_erased": kinds.get((kind, "partially_erased"), 0),
            }
        )

    categories: list[dict[str, Any]] = []
    for name, category in policy.categories.items():
        categories.append(
            {
                "category": name,
                "label": category.label,
                "sensitive": category.sensitive,
                "retention": category.retention,
                "purposes": sorted(
                    p for p, spec in policy.purposes.items() if name in spec.categories
                ),
                "collections": sum(n for (_, c), n in collected.items() if c == name),
                "rectifications": rectified.get(name, 0),
                "on_file": sum(n for (_, c), n in on_file.items() if c == name),
                "erased": erased.get(name, 0),
            }
        )
    observed = [
        {
            "purpose": p,
            "category": c,
            "collections": n,
            "on_file": on_file.get((p, c), 0),
        }
        for (p, c), n in sorted(collected.items())
    ]

    recipients: list[dict[str, Any]] = []
    agreements = {
        r["recipient_kind"]: int(r["n"])
        for r in q(
            "SELECT recipient_kind, COUNT(*) AS n FROM rm_agreements GROUP BY recipient_kind"
        )
    }
    disclosures = {
        r["recipient_kind"]: int(r["n"])
        for r in q(
            "SELECT recipient_kind, COUNT(*) AS n FROM rm_disclosures GROUP BY recipient_kind"
        )
    }
    for kind in RECIPIENT_KINDS:
        recipients.append(
            {
                "kind": kind,
                "label": RECIPIENT_LABELS.get(kind, kind),
                "agreements": agreements.get(kind, 0),
                "disclosures": disclosures.get(kind, 0),
            }
        )
    by_country = [
        {"country": r["country"], "transfers": int(r["n"])}
        for r in q(
            "SELECT country, COUNT(*) AS n FROM rm_transfers GROUP BY country ORDER BY country"
        )
    ]
    disclosure_countries = [
        {"country": r["country"], "disclosures": int(r["n"])}
        for r in q(
            "SELECT country, COUNT(*) AS n FROM rm_disclosures GROUP BY country ORDER BY country"
        )
    ]
    outside = sum(
        row["transfers"] for row in by_country if row["country"] not in policy.eu_countries
    ) + sum(
        row["disclosures"]
        for row in disclosure_countries
        if row["country"] not in policy.eu_countries
    )

    scopes = {
        (r["retention_class"], bool(r["live"])): int(r["n"])
        for r in q(
            "SELECT retention_class, live, COUNT(*) AS n FROM rm_scopes "
            "GROUP BY retention_class, live"
        )
    }
    retention = [
        {
            "class": name,
            "label": klass.label,
            "rule": klass.description,
            "period": period(klass.months, klass.years),
            "anchor": klass.anchor,
            "legal_obligation": klass.legal_obligation,
            "live_scopes": scopes.get((name, True), 0),
            "shredded_scopes": scopes.get((name, False), 0),
        }
        for name, klass in policy.retention.items()
    ]

    controller = policy.controller
    data = {
        "controller": vars(controller),
        "purposes": purposes,
        "undeclared_purposes": undeclared,
        "data_subjects": subject_rows,
        "categories": categories,
        "observed": observed,
        "recipients": recipients,
        "transfers": {
            "allowed_countries": sorted(policy.eu_countries),
            "outside_eu": outside,
            "by_country": by_country,
            "disclosures_by_country": disclosure_countries,
        },
        "retention": retention,
        "security_measures": list(policy.security_measures),
    }

    registered = sum(r["registered"] for r in subject_rows)
    sections = [
        Section(
            "Controller and contact",
            facts=[
                ("Controller", f"{controller.name}, CVR {controller.cvr}"),
                ("Address", controller.address),
                ("Telephone", controller.phone),
                ("E-mail", controller.email),
                ("Contact for data protection questions and complaints", controller.complaints),
                ("Supervisory authority", controller.supervisory_authority),
                ("Privacy policy", f"{policy.name}, in force from {policy.effective.isoformat()}"),
            ],
        ),
        Section(
            "Purposes of the processing and their legal basis",
            paragraphs=[
                "Each purpose the privacy policy names, the legal bases it may rest on, and the "
                "categories of personal data it may use. The last three columns are what the "
                "ledger has recorded: how many people have data on file for the purpose, how "
                "many values were collected for it, and how many processing acts (mailings, "
                "analyses and the like) were carried out for it."
            ]
            + (
                [f"Recorded but not declared in the policy: {', '.join(undeclared)}."]
                if undeclared
                else ["Nothing was recorded for a purpose the policy does not declare."]
            ),
            tables=[
                Table(
                    [
                        "Purpose",
                        "Legal basis",
                        "Categories of data",
                        "People with data on file",
                        "Values collected",
                        "Processing acts",
                    ],
                    [
                        [
                            purpose_label(policy, p["purpose"]),
                            "; ".join(LEGAL_BASES.get(b, b) for b in p["legal_bases"]),
                            ", ".join(p["categories"]),
                            p["subjects_with_data"],
                            p["collections"],
                            p["processing_acts"],
                        ]
                        for p in purposes
                    ],
                )
            ],
        ),
        Section(
            "Categories of data subjects",
            paragraphs=[
                f"The ledger holds records of {plural(registered, 'person', 'people')}. "
                "Erased people are counted because what the law keeps of them (bookkeeping) "
                "and the record of what was done remain."
            ],
            tables=[
                Table(
                    ["Category of data subjects", "Registered", "Erased", "Partly erased"],
                    [
                        [r["label"], r["registered"], r["erased"], r["partially_erased"]]
                        for r in subject_rows
                    ],
                )
            ],
        ),
        Section(
            "Categories of personal data",
            paragraphs=[
                "Every category of personal data in the privacy policy. Sensitive data "
                "(Art. 9) is collected only from the person and with explicit consent. "
                "'On file' counts the people whose newest value is still readable; "
                "'erased' those whose value was destroyed by erasure or retention."
            ],
            tables=[
                Table(
                    [
                        "Category",
                        "Sensitive",
                        "Retention class",
                        "Values collected",
                        "Rectified",
                        "On file",
                        "Erased",
                    ],
                    [
                        [
                            category_label(policy, c["category"]),
                            yes_no(c["sensitive"]),
                            c["retention"],
                            c["collections"],
                            c["rectifications"],
                            c["on_file"],
                            c["erased"],
                        ]
                        for c in categories
                    ],
                ),
                Table(
                    ["Purpose", "Category", "Values collected", "On file"],
                    [
                        [o["purpose"], o["category"], o["collections"], o["on_file"]]
                        for o in observed
                    ],
                    caption="Observed: values collected per purpose and category",
                ),
            ],
        ),
        Section(
            "Recipients",
            paragraphs=[
                "The policy allows disclosure only to recipients the person has agreed to in "
                "advance, for the categories agreed (rule R10). These are the kinds of "
                "recipient, with the agreements made and the disclosures carried out."
            ],
            tables=[
                Table(
                    ["Recipient", "Agreements", "Disclosures"],
                    [[r["label"], r["agreements"], r["disclosures"]] for r in recipients],
                )
            ],
        ),
        Section(
            "Transfers to countries outside the EU",
            paragraphs=[
                ("None. " if outside == 0 else "")
                + "The policy allows transfers and disclosures only to EU member states; "
                "the ledger rejects any other (rule R11), so EEA-only countries such as Norway "
                "count as outside. "
                + (
                    "No transfer or disclosure outside the EU was recorded."
                    if outside == 0
                    else "WARNING: "
                    + plural(outside, "transfer or disclosure", "transfers or disclosures")
                    + " outside the EU were recorded."
                )
            ],
            tables=[
                Table(
                    ["Country", "Transfers"],
                    [[r["country"], r["transfers"]] for r in by_country],
                    caption="Transfers recorded, by country",
                    empty="No transfers were recorded.",
                )
            ],
        ),
        Section(
            "Time limits for erasure",
            paragraphs=[
                "Each category belongs to a retention class. Values are encrypted under keys "
                "per person and class; when the time limit has passed the key is destroyed "
                "(crypto-shredding), unless a legal hold keeps it."
            ],
            tables=[
                Table(
                    ["Retention class", "Time limit", "Kept by law", "Live", "Shredded"],
                    [
                        [
                            f"{r['label']} ({r['class']})",
                            r["rule"],
                            yes_no(r["legal_obligation"]),
                            r["live_scopes"],
                            r["shredded_scopes"],
                        ]
                        for r in retention
                    ],
                )
            ],
        ),
        Section(
            "Technical and organisational security measures",
            bullets=list(policy.security_measures),
        ),
    ]
    return Report(
        name="ropa",
        title=f"Record of processing activities — {controller.name}",
        summary=(
            f"The record of processing activities that GDPR Art. 30(1) requires of "
            f"{controller.name} as data controller, drawn from its privacy policy and checked "
            f"against the ledger's records of {plural(registered, 'person', 'people')}."
        ),
        data=data,
        sections=sections,
    )
