"""`retention`: scopes past their deadline (overdue), kept by a legal hold, or due soon.

A scope is one person's data of one retention class; its deadline is computed by the same
code the retention sweeper uses. Overdue scopes are those the next sweep will shred.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from typing import Any

from ledger.reports import register_report
from ledger.reports.model import Report, ReportContext, Section, Table
from ledger.reports.text import long_date, plural

WINDOW_DAYS = 30


@register_report(
    "retention",
    title="Retention: data due and overdue for erasure",
    description="scopes past their deadline, kept by a hold, or due within 30 days",
)
def retention(ctx: ReportContext) -> Report:
    policy = ctx.policy
    today = ctx.today
    soon = today + timedelta(days=WINDOW_DAYS)
    overdue: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    due_soon: list[dict[str, Any]] = []
    for row in ctx.query(
        "SELECT s.subject, c.scope, c.retention_class, c.deadline, c.held FROM rm_scopes c "
        "JOIN rm_subjects s ON s.sid = c.sid "
        "WHERE c.live AND c.deadline IS NOT NULL AND c.deadline <= ? "
        "ORDER BY c.deadline, s.subject, c.scope",
        (soon.isoformat(),),
    ):
        deadline = date.fromisoformat(row["deadline"])
        item = {
            "subject": row["subject"],
            "scope": row["scope"],
            "class": row["retention_class"],
            "deadline": row["deadline"],
            "held": bool(row["held"]),
        }
        if deadline <= today:
            item["days_overdue"] = (today - deadline).days
            (held if item["held"] else overdue).append(item)
        else:
            item["days_left"] = (deadline - today).days
            due_soon.append(item)

    counts: dict[tuple[str, str], int] = defaultdict(int)
    for row in ctx.query(
        "SELECT retention_class, live, deadline IS NULL AS open_ended, COUNT(*) AS n "
        "FROM rm_scopes GROUP BY retention_class, live, deadline IS NULL"
    ):
        if not row["live"]:
            key = "shredded"
        elif row["open_ended"]:
            key = "open_ended"
        else:
            key = "dated"
        counts[(row["retention_class"], key)] += int(row["n"])
    classes = [
        {
            "class": name,
            "label": klass.label,
            "rule": klass.description,
            "live_with_deadline": counts.get((name, "dated"), 0),
            "live_without_deadline": counts.get((name, "open_ended"), 0),
            "shredded": counts.get((name, "shredded"), 0),
            "overdue": sum(1 for o in overdue if o["class"] == name),
        }
        for name, klass in policy.retention.items()
    ]
    data = {
        "today": today.isoformat(),
        "window_days": WINDOW_DAYS,
        "overdue": overdue,
        "held": held,
        "due_soon": due_soon,
        "classes": classes,
    }

    def rows(items: list[dict[str, Any]], last: str) -> list[list[Any]]:
        return [
            [i["subject"], i["scope"], i["deadline"], i.get(last, ""), "yes" if i["held"] else ""]
            for i in items
        ]

    sections = [
        Section(
            "Overdue: past the deadline and not kept by a hold",
            paragraphs=[
                "Data that should no longer exist. The retention sweeper (ledger sweep) "
                "destroys the keys of these scopes the next time it runs; if this list is not "
                "empty long after a sweep, the sweeper is not running."
            ],
            tables=[
                Table(
                    ["Subject", "Scope", "Deadline", "Days overdue", "Held"],
                    rows(overdue, "days_overdue"),
                    empty="Nothing is overdue.",
                )
            ],
        ),
        Section(
            "Kept past the deadline by a legal hold",
            paragraphs=[
                "A legal hold (a dispute, a request from an authority) keeps all of a person's "
                "data until it is released; then the deadline applies again."
            ],
            tables=[
                Table(
                    ["Subject", "Scope", "Deadline", "Days past", "Held"],
                    rows(held, "days_overdue"),
                    empty="No data is kept by a hold past its deadline.",
                )
            ],
        ),
        Section(
            f"Due within {WINDOW_DAYS} days (by {long_date(soon)})",
            tables=[
                Table(
                    ["Subject", "Scope", "Deadline", "Days left", "Held"],
                    rows(due_soon, "days_left"),
                    empty="Nothing falls due in this period.",
                )
            ],
        ),
        Section(
            "Retention classes",
            paragraphs=[
                "Per class of data: the rule from the privacy policy, how many scopes are "
                "live with a deadline, live without one (the clock has not started, e.g. the "
                "customer relationship is still active), and already shredded."
            ],
            tables=[
                Table(
                    ["Class", "Rule", "With deadline", "No deadline yet", "Shredded", "Overdue"],
                    [
                        [
                            f"{c['label']} ({c['class']})",
                            c["rule"],
                            c["live_with_deadline"],
                            c["live_without_deadline"],
                            c["shredded"],
                            c["overdue"],
                        ]
                        for c in classes
                    ],
                )
            ],
        ),
    ]
    return Report(
        name="retention",
        title=f"Retention: data due and overdue for erasure — {policy.controller.name}",
        summary=(
            f"On {long_date(today)}: {plural(len(overdue), 'scope')} overdue for erasure, "
            f"{plural(len(held), 'scope')} kept past the deadline by a legal hold, "
            f"{plural(len(due_soon), 'scope')} due within {WINDOW_DAYS} days."
        ),
        data=data,
        sections=sections,
    )
