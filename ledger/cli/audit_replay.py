"""`ledger audit replay --as-of ISO`: subject show and reports as they stood at a past moment."""

from __future__ import annotations

import sys
from typing import Any

import typer

from ledger.cli.common import fail, open_ledger, parse_now, print_json
from ledger.errors import LedgerError
from ledger.projections.replay import BASES, replay_as_of
from ledger.reports import FORMATS, available, produce


def replay(
    as_of: str = typer.Option(..., "--as-of", help="The moment (RFC 3339, or a date)."),
    by: str = typer.Option(
        "recorded",
        "--by",
        help="recorded: events the ledger had recorded by then (default); "
        "occurred: events that had happened by then, late reports included.",
    ),
    subject: str | None = typer.Option(None, "--subject", help="Show this subject as of then."),
    report: str | None = typer.Option(None, "--report", help="Produce this report as of then."),
    fmt: str = typer.Option("json", "--format", help="Report format: json, md or html."),
) -> None:
    """Replay the events up to a moment into a temporary store and answer from it.

    Without --subject or --report it prints what the replay holds.

    Values are never revealed: the replay keeps no ciphertext.
    """
    moment = parse_now(as_of, "--as-of")
    assert moment is not None
    if by not in BASES:
        fail(LedgerError("invalid_command", "--by must be recorded or occurred"), as_json=True)
    if fmt not in FORMATS:
        fail(LedgerError("invalid_command", "--format must be json, md or html"), as_json=True)
    if report is not None and report not in available():
        known = ", ".join(available())
        message = f"no report '{report}' (available: {known})"
        fail(LedgerError("invalid_command", message), as_json=True)
    with open_ledger() as ledger, replay_as_of(ledger.app, ledger.policy, moment, basis=by) as rm:
        try:
            out: dict[str, Any] = {"ok": True, "as_of": moment.isoformat(), "basis": by}
            if subject is not None:
                out["subject"] = rm.subject(subject, current=False)
            if report is not None:
                rendered = produce(
                    rm, report, now=moment, fmt=fmt, as_of=moment, basis=by, current=False
                )
                if subject is None and fmt != "json":
                    sys.stdout.write(rendered)
                    return
                out["report"] = rendered
            if subject is None and report is None:
                counts = rm.query("SELECT COUNT(*) AS n FROM rm_subjects", current=False)
                out["subjects"] = int(counts[0]["n"])
                out["position"] = rm.position()
                out["reports"] = list(available())
        except LedgerError as error:
            if error.code == "unknown_subject" and by == "recorded":
                error = LedgerError(
                    error.code,
                    f"{error.message} as recorded by {moment.isoformat()}; a subject whose "
                    "events were recorded later (reported late) is there with --by occurred",
                )
            fail(error, as_json=True)
    if subject is not None and report is None:
        print_json(out["subject"])
    elif report is not None and subject is None:
        print_json(out["report"])
    else:
        print_json(out)
