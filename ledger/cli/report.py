"""`ledger report NAME [--now ISO] [--format json|md|html]`."""

from __future__ import annotations

import sys

import typer

from ledger.cli.common import fail, open_ledger, parse_now, print_json
from ledger.errors import LedgerError
from ledger.reports import FORMATS, available, produce


def report(
    name: str = typer.Argument(
        ...,
        help="ropa, retention, consent, disclosures, requests (compliance where installed).",
    ),
    now: str | None = typer.Option(
        None,
        "--now",
        help="Count dates and deadlines at this time (RFC 3339); the records are today's "
        "(the records as they stood then: ledger audit replay --as-of).",
    ),
    fmt: str = typer.Option("json", "--format", help="json, md (Markdown) or html."),
) -> None:
    """A compliance report from the read models: JSON for programs, Markdown or HTML for people."""
    as_json = fmt == "json"
    if fmt not in FORMATS:
        fail(LedgerError("invalid_command", "--format must be json, md or html"), as_json=True)
    if name not in available():
        known = ", ".join(available())
        fail(
            LedgerError("invalid_command", f"no report '{name}' (available: {known})"),
            as_json=as_json,
        )
    moment = parse_now(now)
    with open_ledger(moment) as ledger:
        try:
            output = produce(ledger.read_models, name, now=moment or ledger.clock.now(), fmt=fmt)
        except LedgerError as error:
            fail(error, as_json=as_json)
    if as_json:
        print_json(output)
    else:
        sys.stdout.write(output)
        sys.stdout.flush()
