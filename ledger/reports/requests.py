"""`requests`: data subject requests (Art. 12(3)) — open, overdue, answered in time or late.

A request is due one month after receipt (three when extended in time); it is answered
late when completed after its due date, overdue when still open after it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ledger.queries import request_is_late
from ledger.reports import register_report
from ledger.reports.model import Report, ReportContext, Section, Table
from ledger.reports.text import RIGHTS, day_of, long_date, plural


def classify(request: dict[str, Any], today: str) -> str:
    """open | overdue | answered_in_time | answered_late (dates in Copenhagen), by the same
    rule as `ledger requests list` (`ledger.queries.request_is_late`)."""
    late = request_is_late(request, today)
    if request["status"] == "open":
        return "overdue" if late else "open"
    return "answered_late" if late else "answered_in_time"


@register_report(
    "requests",
    title="Data subject requests",
    description="requests open, overdue, answered in time and answered late",
)
def requests(ctx: ReportContext) -> Report:
    policy = ctx.policy
    today = ctx.today.isoformat()
    items: list[dict[str, Any]] = []
    for row in ctx.query(
        "SELECT s.subject, r.request, r.right_name, r.received_at, r.due, r.status, "
        "r.verified_at, r.extended_at, r.completed_at, r.outcome FROM rm_requests r "
        "JOIN rm_subjects s ON s.sid = r.sid ORDER BY r.due, r.request"
    ):
        item = {
            "subject": row["subject"],
            "request": row["request"],
            "right": row["right_name"],
            "received_at": row["received_at"],
            "due": row["due"],
            "status": row["status"],
            "extended": row["extended_at"] is not None,
            "identity_verified": row["verified_at"] is not None,
            "completed_at": row["completed_at"],
            "outcome": row["outcome"],
        }
        item["state"] = classify(item, today)
        items.append(item)
    counts = {
        key: sum(1 for i in items if i["state"] == key)
        for key in ("open", "overdue", "answered_in_time", "answered_late")
    }
    by_right: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(counts, 0))
    for item in items:
        by_right[item["right"]][item["state"]] += 1
    rights: list[dict[str, Any]] = [{"right": r, **by_right[r]} for r in RIGHTS if r in by_right]
    data = {
        "today": today,
        "total": len(items),
        "counts": counts,
        "by_right": rights,
        "requests": items,
    }

    def table(state: str, empty: str) -> Table:
        return Table(
            ["Subject", "Request", "Right", "Received", "Due", "Extended", "Completed", "Outcome"],
            [
                [
                    i["subject"],
                    i["request"],
                    RIGHTS.get(i["right"], i["right"]),
                    day_of(i["received_at"]),
                    i["due"],
                    "yes" if i["extended"] else "",
                    day_of(i["completed_at"]),
                    i["outcome"] or "",
                ]
                for i in items
                if i["state"] == state
            ],
            empty=empty,
        )

    sections = [
        Section(
            "Overview",
            paragraphs=[
                "Requests from people exercising their rights must be answered without undue "
                "delay and within one month of receipt; the period may be extended by two "
                "further months if the person is told within the first month (Art. 12(3)). "
                "A deadline that falls on a weekend or Danish public holiday moves to the "
                "next working day."
            ],
            tables=[
                Table(
                    ["Right", "Open", "Overdue", "Answered in time", "Answered late"],
                    [
                        [
                            RIGHTS.get(r["right"], r["right"]),
                            r["open"],
                            r["overdue"],
                            r["answered_in_time"],
                            r["answered_late"],
                        ]
                        for r in rights
                    ]
                    + [
                        [
                            "All requests",
                            counts["open"],
                            counts["overdue"],
                            counts["answered_in_time"],
                            counts["answered_late"],
                        ]
                    ],
                )
            ],
        ),
        Section("Overdue: open past the due date", tables=[table("overdue", "None.")]),
        Section("Open and still within the time limit", tables=[table("open", "None.")]),
        Section("Answered late", tables=[table("answered_late", "None.")]),
    ]
    return Report(
        name="requests",
        title=f"Data subject requests — {policy.controller.name}",
        summary=(
            f"On {long_date(ctx.today)}: {plural(len(items), 'request')} in all; "
            f"{counts['open']:,} open within the time limit, {counts['overdue']:,} overdue, "
            f"{counts['answered_in_time']:,} answered in time and "
            f"{counts['answered_late']:,} answered late."
        ),
        data=data,
        sections=sections,
    )
