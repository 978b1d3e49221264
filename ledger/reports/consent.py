"""`consent`: consents per purpose and channel — given, withdrawn, and in force now.

Counts come from the consent history (every `give_consent` and `withdraw_consent`) and the
current consents; consents of erased people are not counted as in force (nothing may be
processed for them, R17), nor those an objection to the purpose sets aside (R6, R7).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from ledger.reports import register_report
from ledger.reports.model import Report, ReportContext, Section, Table
from ledger.reports.text import CHANNELS, plural, purpose_label


@register_report(
    "consent",
    title="Consents by purpose and channel",
    description="consents given, withdrawn and in force, per purpose and channel",
)
def consent(ctx: ReportContext) -> Report:
    policy = ctx.policy
    given: dict[str, int] = defaultdict(int)
    withdrawals: dict[str, int] = defaultdict(int)
    full: dict[str, int] = defaultdict(int)
    channel_given: dict[tuple[str, str], int] = defaultdict(int)
    channel_withdrawn: dict[tuple[str, str], int] = defaultdict(int)
    for row in ctx.query(
        "SELECT purpose, action, channels, full_withdrawal FROM rm_consent_events"
    ):
        purpose = row["purpose"]
        channels = orjson.loads(row["channels"]) if row["channels"] else []
        if row["action"] == "given":
            given[purpose] += 1
            for channel in channels:
                channel_given[(purpose, channel)] += 1
        else:
            withdrawals[purpose] += 1
            full[purpose] += 1 if row["full_withdrawal"] else 0
            for channel in channels:
                channel_withdrawn[(purpose, channel)] += 1
    active: dict[str, int] = defaultdict(int)
    explicit: dict[str, int] = defaultdict(int)
    channel_active: dict[tuple[str, str], int] = defaultdict(int)
    objected: dict[str, int] = defaultdict(int)
    for row in ctx.query(
        "SELECT c.purpose, c.channels, c.explicit, EXISTS (SELECT 1 FROM rm_objections o "
        "WHERE o.sid = c.sid AND o.purpose = c.purpose) AS objected FROM rm_consents c "
        "JOIN rm_subjects s ON s.sid = c.sid WHERE c.active AND s.erased_at IS NULL"
    ):
        if row["objected"]:  # the person objected since: nothing may rest on it
            objected[row["purpose"]] += 1
            continue
        active[row["purpose"]] += 1
        explicit[row["purpose"]] += 1 if row["explicit"] else 0
        for channel in orjson.loads(row["channels"]):
            channel_active[(row["purpose"], channel)] += 1

    names = [
        p for p in policy.purposes if p in given or "consent" in policy.purposes[p].legal_bases
    ]
    names += sorted(set(given) - set(names))
    purposes: list[dict[str, Any]] = []
    for name in names:
        spec = policy.purposes.get(name)
        channels = sorted(
            {c for p, c in channel_given if p == name}
            | {c for p, c in channel_active if p == name}
            | (set(spec.consent_channels) if spec else set()),
            key=lambda c: list(CHANNELS).index(c) if c in CHANNELS else len(CHANNELS),
        )
        purposes.append(
            {
                "purpose": name,
                "label": spec.label if spec else name,
                "channel_consent_required": sorted(spec.consent_channels) if spec else [],
                "given": given.get(name, 0),
                "withdrawals": withdrawals.get(name, 0),
                "full_withdrawals": full.get(name, 0),
                "active": active.get(name, 0),
                "set_aside_by_objection": objected.get(name, 0),
                "explicit_active": explicit.get(name, 0),
                "channels": [
                    {
                        "channel": c,
                        "given": channel_given.get((name, c), 0),
                        "withdrawn": channel_withdrawn.get((name, c), 0),
                        "active": channel_active.get((name, c), 0),
                    }
                    for c in channels
                ],
            }
        )

    rows: list[list[Any]] = []
    for p in purposes:
        rows.append(
            [
                purpose_label(policy, p["purpose"]),
                "(the purpose as a whole)",
                p["given"],
                p["full_withdrawals"],
                p["active"],
            ]
        )
        for c in p["channels"]:
            required = (
                " (consent required)" if c["channel"] in p["channel_consent_required"] else ""
            )
            rows.append(
                [
                    "",
                    f"{CHANNELS.get(c['channel'], c['channel'])}{required}",
                    c["given"],
                    c["withdrawn"],
                    c["active"],
                ]
            )
    total_active = sum(p["active"] for p in purposes)
    sections = [
        Section(
            "Consents per purpose and channel",
            paragraphs=[
                "For each purpose: how many times consent was given, how many times it was "
                "withdrawn, and how many people's consent is in force. A consent may "
                "name channels (e-mail, SMS, telephone ...); electronic and telephone "
                "marketing needs consent for the channel itself (markedsføringsloven §10). "
                "On the purpose line 'withdrawn' counts withdrawals of the whole consent; on a "
                "channel line it counts withdrawals that removed that channel.",
            ],
            tables=[
                Table(
                    ["Purpose", "Channel", "Given", "Withdrawn", "In force now"],
                    rows,
                    empty="No consent has been recorded.",
                )
            ],
        ),
        Section(
            "How to read this",
            bullets=[
                "Giving consent again while a consent is in force adds channels to it.",
                "Withdrawal stops future processing; processing before it stays lawful "
                "(Art. 7(3)) and stays in the history.",
                f"Explicit consents (Art. 9(2)(a), for sensitive data) in force: "
                f"{sum(p['explicit_active'] for p in purposes):,}.",
                "People who were erased are not counted as having a consent in force.",
                "Nor are people who objected to the purpose after consenting (Art. 21; for "
                "direct marketing the objection is unconditional): consents set aside so: "
                f"{sum(objected.values()):,}.",
            ],
        ),
    ]
    return Report(
        name="consent",
        title=f"Consents by purpose and channel — {policy.controller.name}",
        summary=(
            f"Consents recorded by {policy.controller.name}: "
            f"{plural(sum(given.values()), 'consent given', 'consents given')}, "
            f"{plural(sum(withdrawals.values()), 'withdrawal')}, "
            f"{plural(total_active, 'consent')} in force across all purposes."
        ),
        data={"purposes": purposes},
        sections=sections,
    )
