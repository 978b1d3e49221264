"""`ledger init`, `ledger exec`, `ledger subject ...`, `ledger sweep`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.progress import Progress

from ledger.cli.common import (
    after_write,
    console,
    err_console,
    fail,
    open_ledger,
    parse_now,
    print_json,
    print_table,
)
from ledger.errors import LedgerError

subject_app = typer.Typer(help="Query one data subject.", no_args_is_help=True)


def init() -> None:
    """Create the ledger's home, keys and tables (every command also does this on first use)."""
    with open_ledger() as ledger:
        settings = ledger.settings
        rows = [
            ("home", str(settings.home)),
            ("events", _where(settings.database)),
            ("keys", _where(settings.keystore)),
            (
                "master key",
                "LEDGER_MASTER_KEY" if settings.master_key else str(settings.master_key_file),
            ),
            ("policy", f"{ledger.policy.name} {ledger.policy.version}"),
        ]
        after_write(ledger)
    print_table("Ledger initialised", ["what", "where"], rows)


def _where(url: Any) -> str:
    if url.backend == "sqlite":
        return f"sqlite {url.sqlite_path}"
    schema = f" schema {url.schema}" if url.schema else ""
    return f"postgresql {url.host}:{url.port}/{url.dbname}{schema}"


def exec_(
    file: str = typer.Argument("-", help="JSON Lines of commands; '-' reads standard input."),
    actor: str | None = typer.Option(None, "--actor", help="Who sends these commands."),
) -> None:
    """Execute commands (JSON Lines), one result line each; exit 1 if any was rejected."""
    stream = sys.stdin if file == "-" else Path(file).open(encoding="utf-8")  # noqa: SIM115
    rejected = 0
    with open_ledger() as ledger:
        try:
            for line in stream:
                if not line.strip():
                    continue
                try:
                    command = orjson.loads(line)
                except orjson.JSONDecodeError:
                    result = LedgerError("invalid_command", "the line is not JSON").to_result()
                else:
                    result = ledger.execute(command, actor=actor)
                rejected += 0 if result["ok"] else 1
                print_json(result)
        finally:
            if stream is not sys.stdin:
                stream.close()
            after_write(ledger)
    if rejected:
        raise typer.Exit(1)


@subject_app.command("show")
def subject_show(
    subject: str = typer.Argument(..., help="The subject's id."),
    reveal: bool = typer.Option(False, "--reveal", help="Decrypt values (recorded as a view)."),
    purpose: str | None = typer.Option(None, "--purpose", help="Why the values are revealed."),
    actor: str | None = typer.Option(None, "--actor", help="Who reveals."),
    as_json: bool = typer.Option(False, "--json", help="JSON for programs."),
) -> None:
    """The subject's current state: data, consents, agreements, retention, requests."""
    if reveal and not purpose:
        fail(LedgerError("invalid_command", "--reveal needs --purpose"), as_json=as_json)
    with open_ledger() as ledger:
        try:
            view = ledger.subject(subject, reveal=reveal, purpose=purpose, actor=actor or _user())
        except LedgerError as error:
            fail(error, as_json=as_json)
        if reveal:
            after_write(ledger)
    if as_json:
        print_json(view)
        return
    console.print(
        f"[bold]Subject {view['subject']}[/bold]  {view['kind']}  status: {view['status']}"
    )
    print_table(
        "Data",
        ["category", "value", "purpose", "basis", "source", "scope", "collected"],
        [
            (
                d["category"],
                "(erased)"
                if d["erased"]
                else ("•••" if d["value"] is None else _short(d["value"])),
                d["purpose"],
                d["legal_basis"],
                d["source"],
                d["scope"],
                d["collected_at"],
            )
            for d in view["data"]
        ],
    )
    print_table(
        "Consents",
        ["purpose", "active", "channels", "explicit", "given", "withdrawn"],
        [
            (
                c["purpose"],
                c["active"],
                ",".join(c["channels"]),
                c["explicit"],
                c["given_at"],
                c["withdrawn_at"],
            )
            for c in view["consents"]
        ],
    )
    print_table(
        "Retention",
        ["scope", "deadline", "held", "shredded"],
        [(r["scope"], r["deadline"], r["held"], r["shredded_at"]) for r in view["retention"]],
    )
    if view["requests"]:
        print_table(
            "Requests",
            ["request", "right", "received", "due", "status"],
            [
                (r["request"], r["right"], r["received_at"], r["due"], r["status"])
                for r in view["requests"]
            ],
        )


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


@subject_app.command("find")
def subject_find(
    cpr: str | None = typer.Option(None, "--cpr"),
    email: str | None = typer.Option(None, "--email"),
    phone: str | None = typer.Option(None, "--phone"),
    customer_number: str | None = typer.Option(None, "--customer-number"),
    as_json: bool = typer.Option(False, "--json", help="JSON for programs."),
) -> None:
    """Find subjects by an identifier (through the keyed-hash index; nothing is decrypted)."""
    given = {
        k: v
        for k, v in {
            "cpr": cpr,
            "email": email,
            "phone": phone,
            "customer_number": customer_number,
        }.items()
        if v is not None
    }
    if len(given) != 1:
        fail(
            LedgerError(
                "invalid_command", "give exactly one of --cpr, --email, --phone, --customer-number"
            ),
            as_json=as_json,
        )
    kind, value = next(iter(given.items()))
    with open_ledger() as ledger:
        try:
            found = ledger.find(kind, value)
        except LedgerError as error:
            fail(error, as_json=as_json)
        subjects = [
            {"subject": s, "kind": ledger.subject(s)["kind"], "status": ledger.subject(s)["status"]}
            for s in found
        ]
    if as_json:
        print_json({"subjects": subjects})
    else:
        print_table(
            f"Subjects by {kind}",
            ["subject", "kind", "status"],
            [(s["subject"], s["kind"], s["status"]) for s in subjects],
        )


@subject_app.command("history")
def subject_history(
    subject: str = typer.Argument(..., help="The subject's id."),
    as_json: bool = typer.Option(False, "--json", help="JSON for programs."),
) -> None:
    """Every event of the subject: what, when, by whom, never a value."""
    with open_ledger() as ledger:
        try:
            events = ledger.history(subject)
        except LedgerError as error:
            fail(error, as_json=as_json)
    if as_json:
        print_json({"subject": subject, "events": events})
        return
    print_table(
        f"History of {subject}",
        ["#", "event", "occurred", "recorded", "actor", "details"],
        [
            (
                e["version"],
                e["type"],
                e["occurred_at"],
                e["recorded_at"],
                e["actor"],
                _details(e["details"]),
            )
            for e in events
        ],
    )


def _details(details: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in details.items() if v not in (None, [], {}))


def sweep(
    now: str | None = typer.Option(None, "--now", help="Sweep as of this time (RFC 3339)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what is due."),
    as_json: bool = typer.Option(False, "--json", help="JSON for programs."),
) -> None:
    """Shred every scope past its retention deadline that no legal hold keeps."""
    moment = parse_now(now)
    with open_ledger(moment) as ledger:
        if as_json or not sys.stderr.isatty():
            report = ledger.sweep(moment, dry_run=dry_run)
        else:
            with Progress(console=err_console, transient=True) as bar:
                task = bar.add_task("sweeping", total=None)

                def tick(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                report = ledger.sweep(moment, dry_run=dry_run, progress=tick)
        if not dry_run:
            after_write(ledger)
    if as_json:
        print_json(report)
        return
    verb = "due" if dry_run else "shredded"
    print_table(
        f"Sweep at {report['now']}: {len(report['shredded'])} scopes {verb} "
        f"of {report['subjects']} subjects",
        ["subject", "scope", "deadline"],
        [(s["subject"], s["scope"], s["deadline"]) for s in report["shredded"]],
    )
