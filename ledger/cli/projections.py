"""`ledger projections rebuild | status | run`: the read models from the command line."""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ledger.cli.common import err_console, open_ledger, print_json, print_table
from ledger.logs import get_logger

log = get_logger("ledger.projections")

projections_app = typer.Typer(
    help="Read models: rebuild them, show how current they are, keep them current.",
    no_args_is_help=True,
)


@projections_app.command("rebuild")
def rebuild(
    as_json: bool = typer.Option(False, "--json", help="JSON for programs."),
) -> None:
    """Drop every read model and replay all events into it (with a progress bar)."""
    with open_ledger() as ledger:
        models = ledger.read_models
        started = time.perf_counter()
        if as_json or not sys.stderr.isatty():
            events = models.rebuild()
        else:
            columns = (
                TextColumn("rebuilding read models"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=err_console, transient=True) as bar:
                task = bar.add_task("rebuild", total=max(models.head(), 1))

                def tick(position: int, target: int) -> None:
                    bar.update(task, completed=position, total=max(target, 1))

                events = models.rebuild(progress=tick)
        seconds = time.perf_counter() - started
        status = models.status().as_dict()
    result = {
        "ok": True,
        **status,
        "events": events,
        "seconds": round(seconds, 3),
        "events_per_second": round(events / seconds) if seconds > 0 else None,
    }
    if as_json:
        print_json(result)
        return
    print_table(
        "Read models rebuilt",
        ["projection", "events replayed", "seconds", "events/s", "position"],
        [
            (
                result["projection"],
                f"{events:,}",
                f"{seconds:.2f}",
                f"{result['events_per_second'] or 0:,}",
                f"{status['position']:,}",
            )
        ],
    )


@projections_app.command("status")
def status(
    as_json: bool = typer.Option(False, "--json", help="JSON for programs."),
) -> None:
    """Each projection's position in the event log, and how far behind it is."""
    with open_ledger() as ledger:
        current = ledger.read_models.status().as_dict()
        subjects = ledger.read_models.query("SELECT COUNT(*) AS n FROM rm_subjects", current=False)
        current["subjects"] = int(subjects[0]["n"])
    if as_json:
        print_json({"ok": True, "projections": [current]})
        return
    print_table(
        "Projections",
        ["projection", "backend", "position", "head", "lag (events)", "subjects"],
        [
            (
                current["projection"],
                current["backend"],
                f"{current['position']:,}",
                f"{current['head']:,}",
                f"{current['lag']:,}",
                f"{current['subjects']:,}",
            )
        ],
    )


@projections_app.command("run")
def run(
    poll: float = typer.Option(
        0.5, "--poll", help="Seconds between polls where no subscription is offered (SQLite)."
    ),
    once: bool = typer.Option(False, "--once", help="Catch up once and exit."),
) -> None:
    """Keep the read models current as a worker, until interrupted (Ctrl-C or SIGTERM).

    On PostgreSQL it is woken by LISTEN/NOTIFY through the library's subscription.
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with open_ledger() as ledger:
        models = ledger.read_models
        if once:
            applied = models.catch_up()
            err_console.print(f"caught up: {applied:,} events, position {models.position():,}")
            return
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        err_console.print(
            f"read models at {models.position():,} of {models.head():,}; "
            f"running on {models.backend} (Ctrl-C stops)"
        )

        def caught_up(count: int) -> None:
            log.info("read_models_caught_up", events=count, position=models.position())

        models.run(stop, poll=poll, on_batch=caught_up)
