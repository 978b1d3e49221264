"""What every CLI command shares: opening the ledger, `--now`, JSON and table output."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ledger.clock import RANGE, FixedClock, SystemClock, parse_instant
from ledger.config import Settings
from ledger.errors import LedgerError
from ledger.facade import Ledger

T = TypeVar("T")

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


def settings_from_env() -> Settings:
    """The environment's settings; a malformed URL ends the command (exit status 2)."""
    try:
        return Settings.from_env()
    except ValueError as exc:  # a malformed LEDGER_DATABASE_URL or LEDGER_KEYSTORE_URL
        configuration_error(str(exc))


def open_or_explain(settings: Settings, opener: Callable[[], T]) -> T:
    """What `opener` opens; a configuration it cannot open with (a missing policy file, an
    unreachable database, a wrong master key) ends the command with one line naming it,
    exit status 2. Anything else is not the configuration's: it propagates."""
    try:
        return opener()
    except LedgerError:
        raise
    except Exception as exc:
        message = cannot_open(settings, exc)
        if message is None:
            raise
        configuration_error(message)


@contextmanager
def open_ledger(now: datetime | None = None) -> Iterator[Ledger]:
    """Open the ledger of the environment; a `LedgerError` ends the command with its code,
    a configuration it cannot open with (`configuration_error`) with exit status 2."""
    clock = FixedClock(now) if now is not None else SystemClock()
    settings = settings_from_env()
    try:
        opened = open_or_explain(settings, lambda: Ledger.open(settings, clock=clock))
    except LedgerError as error:
        fail(error)
    try:
        with opened as ledger:
            yield ledger
    except LedgerError as error:
        fail(error)


def configuration_error(message: str) -> NoReturn:
    """End the command: `error configuration: ...` on standard error, exit status 2."""
    err_console.print(
        f"[red]error[/red] configuration: {escape(message)}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(2)


def cannot_open(settings: Settings, exc: Exception) -> str | None:
    """What keeps the ledger from opening with these settings, in one line; None for an
    error that is not the configuration's (a bug: its traceback is shown)."""
    import sqlite3

    import psycopg
    from eventsourcing.persistence import PersistenceError

    from ledger.crypto.keystore import KeyStoreError
    from ledger.crypto.master import MasterKeyError
    from ledger.domain.policy import PolicyError

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, PolicyError):
        return f"LEDGER_POLICY: {first}" if settings.policy_path else first
    if isinstance(exc, MasterKeyError):
        if settings.master_key and "LEDGER_MASTER_KEY" not in first:
            return f"LEDGER_MASTER_KEY: {first}"
        return first
    if isinstance(exc, KeyStoreError):
        where = "LEDGER_MASTER_KEY" if settings.master_key else str(settings.master_key_file)
        return f"{first} (the master key from {where})"
    if isinstance(exc, psycopg.Error | PersistenceError | sqlite3.Error):
        urls = "LEDGER_DATABASE_URL"
        if settings.keystore != settings.database and settings.keystore.backend == "postgres":
            urls += " or LEDGER_KEYSTORE_URL"
        return f"cannot open the database ({urls}): {first}"
    if isinstance(exc, OSError):
        return f"cannot use LEDGER_HOME or LEDGER_LOG_FILE: {first}"
    return None


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
    """A table for people: long cells wrap instead of being cut (an id or a revealed value
    is no use with its end missing), true and false read yes and no."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)


def print_facts(title: str, facts: Sequence[tuple[str, Any]]) -> None:
    """Named facts as a two-column table without a header."""
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in facts:
        table.add_row(name, _cell(value))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
