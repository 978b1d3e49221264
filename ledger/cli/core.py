"""`ledger init`, `ledger exec`, `ledger subject ...`, `ledger sweep`."""

from __future__ import annotations

import signal
import sys
import threading
from datetime import datetime
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
    print_facts,
    print_json,
    print_table,
)
from ledger.errors import LedgerError
from ledger.facade import Ledger
from ledger.logs import get_logger
from ledger.reconnect import Backoff, unavailable_errors
from ledger.reports.text import plural

log = get_logger("ledger.sweepers.retention")  # the sweeper as a worker (`sweep --every`)

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
    """Execute commands (JSON Lines), one result line each; exit 1 if any was rejected.

    Each line is its own transaction, and a rejected line does not stop the rest.

    A line that is not UTF-8 JSON is rejected as invalid_command.
    """
    try:
        stream = sys.stdin.buffer if file == "-" else Path(file).open("rb")  # noqa: SIM115
    except OSError as exc:  # the path is not repeated: it is the caller's to know
        fail(LedgerError("invalid_command", f"cannot read the commands file: {exc.strerror}"))
    rejected = 0
    with open_ledger() as ledger:
        try:
            for line in stream:
                if not line.strip():
                    continue
                try:
                    command = orjson.loads(line)
                except orjson.JSONDecodeError:
                    result = LedgerError(
                        "invalid_command", "the line is not JSON (UTF-8)"
                    ).to_result()
                else:
                    result = ledger.execute(command, actor=actor)
                rejected += 0 if result["ok"] else 1
                print_json(result)
        finally:
            if stream is not sys.stdin.buffer:
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
    show_subject(view, revealed=reveal)


def _in_force(consent: dict[str, Any], *, erased: bool) -> Any:
    """After an erasure nothing may rest on a consent given before it (R17). The view keeps
    the consent as it was given, but "in force: yes" would tell an officer the opposite."""
    if consent["active"] and erased:
        return "no: the subject was erased"
    return consent["active"]


def show_subject(view: dict[str, Any], *, revealed: bool) -> None:
    """`subject show` for a person: every part of the view an officer acts on, each as a
    table (the parts that are empty are left out), nothing cut short; `print_table` and
    `print_facts` say yes and no for true and false."""
    facts = [
        ("subject", view["subject"]),
        ("kind", view["kind"]),
        ("status", view["status"]),
        ("registered", view["registered_at"]),
        ("processing restricted (Art. 18)", view["restricted"]),
    ]
    if view["provided_by"]:
        facts.append(("data given by subject", view["provided_by"]))
    if view["erased_at"]:
        facts.append(("erased", view["erased_at"]))
    print_facts("Subject", facts)
    print_table(
        "Data" if revealed else "Data (values hidden: --reveal --purpose WHY opens them)",
        ["category", "value", "purpose", "basis", "source", "scope", "collected"],
        [
            (
                d["category"],
                "(erased)" if d["erased"] else ("•••" if d["value"] is None else _text(d["value"])),
                d["purpose"],
                d["legal_basis"],
                d["source"],
                d["scope"],
                d["collected_at"],
            )
            for d in view["data"]
        ],
    )
    sections: list[tuple[str, list[str], list[tuple[Any, ...]]]] = [
        (
            "Consents",
            ["purpose", "in force", "channels", "explicit", "categories", "given", "withdrawn"],
            [
                (
                    c["purpose"],
                    _in_force(c, erased=bool(view["erased_at"])),
                    ", ".join(c["channels"]),
                    c["explicit"],
                    ", ".join(c["categories"]),
                    c["given_at"],
                    c["withdrawn_at"],
                )
                for c in view["consents"]
            ],
        ),
        (
            "Objections (Art. 21)",
            ["purpose", "objected"],
            [(o["purpose"], o["objected_at"]) for o in view["objections"]],
        ),
        (
            "Relationships",
            ["relationship", "active", "started", "ended"],
            [
                (r["relationship"], r["active"], r["started_at"], r["ended_at"])
                for r in view["relationships"]
            ],
        ),
        (
            "Disclosure agreements",
            [
                "agreement",
                "recipient",
                "country",
                "categories",
                "purpose",
                "valid until",
                "agreed",
                "revoked",
            ],
            [
                (
                    a["agreement"],
                    a["recipient"]["kind"]
                    + (f": {a['recipient']['name']}" if a["recipient"]["name"] else ""),
                    a["recipient"]["country"],
                    ", ".join(a["categories"]),
                    a["purpose"],
                    a["valid_until"],
                    a["agreed_at"],
                    a["revoked_at"],
                )
                for a in view["agreements"]
            ],
        ),
        (
            "Disclosures",
            ["disclosed", "agreement", "recipient", "country", "categories"],
            [
                (
                    d["disclosed_at"],
                    d["agreement"],
                    d["recipient_kind"],
                    d["country"],
                    ", ".join(d["categories"]),
                )
                for d in view["disclosures"]
            ],
        ),
        (
            "Transfers",
            ["transferred", "recipient", "country", "categories"],
            [
                (t["transferred_at"], t["recipient"], t["country"], ", ".join(t["categories"]))
                for t in view["transfers"]
            ],
        ),
        (
            "Legal holds",
            ["hold", "reason", "placed", "released"],
            [(h["hold"], h["reason"], h["placed_at"], h["released_at"]) for h in view["holds"]],
        ),
        (
            "Retention",
            ["scope", "deadline", "held", "shredded"],
            [(r["scope"], r["deadline"], r["held"], r["shredded_at"]) for r in view["retention"]],
        ),
        (
            "Requests",
            ["request", "right", "received", "due", "status", "extended", "outcome"],
            [
                (
                    r["request"],
                    r["right"],
                    r["received_at"],
                    r["due"],
                    r["status"],
                    r["extended"],
                    r["outcome"],
                )
                for r in view["requests"]
            ],
        ),
    ]
    for title, columns, rows in sections:
        if rows:
            print_table(title, columns, rows)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


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
    elif not subjects:  # erased subjects are not found either: their lookup rows are gone
        console.print(f"No subject has this {kind.replace('_', ' ')}.")
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
    every: str | None = typer.Option(
        None, "--every", help="Keep sweeping at this interval (30s, 15m, 1h, 1d) until stopped."
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON for programs."),
) -> None:
    """Shred every scope past its retention deadline that no legal hold keeps."""
    moment = parse_now(now)
    if every is not None:
        if moment is not None or dry_run:
            fail(LedgerError("invalid_command", "--every sweeps at the real time, for real"))
        _sweep_forever(parse_duration(every), as_json)
        return
    with open_ledger(moment) as ledger:
        report = _sweep_once(ledger, moment, dry_run, as_json)
        if not dry_run:
            after_write(ledger)
    _print_sweep(report, as_json)


def _sweep_once(
    ledger: Ledger, moment: datetime | None, dry_run: bool, as_json: bool
) -> dict[str, Any]:
    if as_json or not sys.stderr.isatty():
        return ledger.sweep(moment, dry_run=dry_run)
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("sweeping", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return ledger.sweep(moment, dry_run=dry_run, progress=tick)


def _print_sweep(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(report)
        return
    verb = "due" if report["dry_run"] else "shredded"
    print_table(
        f"Sweep at {report['now']}: {plural(len(report['shredded']), 'scope')} {verb} "
        f"of {plural(report['subjects'], 'subject')}",
        ["subject", "scope", "deadline"],
        [(s["subject"], s["scope"], s["deadline"]) for s in report["shredded"]],
    )


def _sweep_forever(interval: float, as_json: bool) -> None:
    """The sweeper as a worker: sweep, sleep, repeat; stops cleanly on SIGTERM or Ctrl-C.

    A sweep that fails because the database went away (a restart, a failover) is logged
    and tried again after a pause that doubles from 0.5 s up to 30 s (or the interval, if
    shorter). A sweep shreds in steps that each commit, so the next one goes on where the
    failed one stopped; what a failed sweep shredded before it failed is in the event log
    (`ScopeShredded`), not in a report. The work after a sweep (read models, Merkle log)
    that fails the same way is left to the next sweep's."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    backoff = Backoff(most=min(30.0, interval))
    with open_ledger() as ledger:
        while not stop.is_set():
            try:
                report = ledger.sweep()
            except unavailable_errors() as exc:
                pause = backoff.failed()
                error = type(exc).__name__
                log.warning("sweep_database_unavailable", error=error, retry_in_s=pause)
                stop.wait(pause)
                continue
            backoff.succeeded()
            if as_json:
                print_json(report)
            else:
                err_console.print(
                    f"{report['now']}: {len(report['shredded'])} scopes shredded, "
                    f"{report['reconciled_keys']} keys reconciled"
                )
            try:
                after_write(ledger)
            except unavailable_errors() as exc:
                log.warning("after_sweep_database_unavailable", error=type(exc).__name__)
            stop.wait(interval)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`30s`, `15m`, `1h`, `1d` (or plain seconds)."""
    value = text.strip().lower()
    try:
        if value and value[-1] in _UNITS:
            seconds = float(value[:-1]) * _UNITS[value[-1]]
        else:
            seconds = float(value)
    except ValueError:
        raise typer.BadParameter("a duration is like 30s, 15m, 1h or 1d") from None
    if seconds <= 0:
        raise typer.BadParameter("a duration must be positive")
    return seconds


requests_app = typer.Typer(help="Data subject requests and their deadlines.", no_args_is_help=True)


@requests_app.command("list")
def requests_list(
    overdue: bool = typer.Option(False, "--overdue", help="Only open requests past due."),
    now: str | None = typer.Option(None, "--now", help="As of this time (RFC 3339)."),
    as_json: bool = typer.Option(False, "--json", help="JSON for programs."),
) -> None:
    """Every request with its due date (Art. 12(3)); late ones are marked."""
    moment = parse_now(now)
    with open_ledger(moment) as ledger:
        found = ledger.requests(overdue=overdue, now=moment)
    if as_json:
        print_json({"requests": found})
        return
    print_table(
        "Overdue requests" if overdue else "Requests",
        ["subject", "request", "right", "received", "due", "status", "late"],
        [
            (
                r["subject"],
                r["request"],
                r["right"],
                r["received_at"],
                r["due"],
                r["status"],
                "LATE" if r["late"] else "",
            )
            for r in found
        ],
    )


@subject_app.command("export")
def subject_export(
    subject: str = typer.Argument(..., help="The subject's id."),
    portable: bool = typer.Option(False, "--portable", help="Art. 20 export instead of Art. 15."),
    fmt: str = typer.Option("json", "--format", help="json or html."),
    actor: str | None = typer.Option(None, "--actor", help="Who exports (recorded)."),
) -> None:
    """The subject's own copy: Art. 15 access answer, or `--portable` Art. 20 data."""
    if fmt not in ("json", "html"):
        fail(LedgerError("invalid_command", "--format is json or html"))
    with open_ledger() as ledger:
        try:
            document = ledger.export(subject, portable=portable, actor=actor or _user())
        except LedgerError as error:
            fail(error)
        after_write(ledger)
    if fmt == "json":
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        from ledger.exports import render_html

        sys.stdout.write(render_html(document) + "\n")
