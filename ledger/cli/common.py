"""What every CLI command shares: opening the ledger, `--now`, JSON and table output."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from ledger.clock import RANGE, FixedClock, SystemClock, parse_instant
from ledger.errors import LedgerError
from ledger.facade import Ledger

console = Console()
err_console = Console(stderr=True)


def parse_now(now: str | None, option: str = "--now") -> datetime | None:
    if now is None:
        return None
    try:
        return parse_instant(now)
    except ValueError:
        raise typer.BadParameter(
            f"{option} must be an RFC 3339 time with offset, or a date (its midnight in "
            f"Copenhagen), {RANGE}"
        ) from None


@contextmanager
def open_ledger(now: datetime | None = None) -> Iterator[Ledger]:
    """Open the ledger of the environment; a `LedgerError` ends the command with its code."""
    clock = FixedClock(now) if now is not None else SystemClock()
    try:
        with Ledger.open(clock=clock) as ledger:
            yield ledger
    except LedgerError as error:
        fail(error)


def after_write(ledger: Ledger) -> None:
    """Work that follows every write from the CLI (and the HTTP server's background work),
    so the next query sees it and no erasure a crash left half done stays so."""
    ledger.reconcile_keys()
    ledger.read_models.catch_up()
    from ledger.audit.service import seal_after_write

    seal_after_write(ledger)  # add the new events to the Merkle log, sign a checkpoint


def fail(error: LedgerError, *, as_json: bool = False) -> None:
    if as_json:
        print_json(error.to_result())
    else:
        err_console.print(f"[red]error[/red] {error.code}: {error.message}")
    raise typer.Exit(1)


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
