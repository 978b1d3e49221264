"""`ledger serve`: the HTTP service (DESIGN 5.4) on uvicorn."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from types import FrameType

import typer

from ledger.api.background import BackgroundProcess
from ledger.api.options import ServerOptions
from ledger.api.tokens import TokenStore
from ledger.cli.common import err_console, open_ledger
from ledger.config import DatabaseURL


def _where(url: DatabaseURL) -> str:
    if url.backend == "sqlite":
        return f"SQLite {url.sqlite_path}"
    schema = f" (schema {url.schema})" if url.schema else ""
    return f"PostgreSQL {url.host}:{url.port}/{url.dbname}{schema}"


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    workers: int = typer.Option(1, "--workers", min=1, help="Server processes (PostgreSQL)."),
    sweep_every: float | None = typer.Option(
        None,
        "--sweep-every",
        min=1.0,
        help="Seconds between retention sweeps [default: LEDGER_API_SWEEP_EVERY or 3600].",
    ),
    no_sweep: bool = typer.Option(False, "--no-sweep", help="No retention sweeper here."),
    no_group_commit: bool = typer.Option(
        False, "--no-group-commit", help="One transaction per command (for comparison)."
    ),
    group_max: int | None = typer.Option(
        None,
        "--group-max",
        min=1,
        help="Commands per group, at most [default: LEDGER_API_GROUP_MAX or 256].",
    ),
    group_wait_ms: float | None = typer.Option(
        None,
        "--group-wait-ms",
        min=0.0,
        help="How long a group waits for more commands [default: LEDGER_API_GROUP_WAIT_MS or 2.0].",
    ),
) -> None:
    """Serve the ledger over HTTP (FastAPI on uvicorn) until interrupted."""
    import uvicorn

    options = _options_from_env()
    with open_ledger() as ledger:
        settings = ledger.settings
    if workers > 1 and settings.database.backend != "postgres":
        err_console.print(
            "[red]error[/red] several --workers need PostgreSQL (LEDGER_DATABASE_URL)"
        )
        raise typer.Exit(2)
    tokens = TokenStore.open(settings)
    try:
        has_tokens = tokens.any_live()
    finally:
        tokens.close()
    err_console.print(f"ledger home: {settings.home}")
    err_console.print(f"events:      {_where(settings.database)}")
    err_console.print(f"keys:        {_where(settings.keystore)}")
    err_console.print(f"logs:        {settings.log_path} (one JSON line per request)")
    if not has_tokens:
        err_console.print(
            "No tokens yet: every request needs one. Create one (shown once) with\n"
            "  ledger token create --role service --name billing\n"
            "(roles: service, officer, auditor, admin) and send it in the header\n"
            "  Authorization: Bearer <token>",
            soft_wrap=True,
        )
    err_console.print(f"API document: http://{host}:{port}/docs")
    # The server processes only answer requests; one background process per `serve` keeps
    # read models current and sweeps, so its rounds never stall a response. The options
    # come from the environment (`LEDGER_API_*`, docs/http.md); the command line changes
    # only what it was given, and the workers read the result back from the environment.
    if no_group_commit:
        options = replace(options, group_commit=False)
    if group_max is not None:
        options = replace(options, group_max=group_max)
    if group_wait_ms is not None:
        options = replace(options, group_wait_ms=group_wait_ms)
    if sweep_every is not None:
        options = replace(options, sweep_every=sweep_every)
    background_sweep = None if no_sweep else options.sweep_every
    background_tick = options.tick if options.tick > 0 else 1.0
    os.environ.update(replace(options, sweep_every=None, tick=0).to_env())
    background = BackgroundProcess(tick=background_tick, sweep_every=background_sweep)
    background.start()
    stopped: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        # uvicorn restores this handler after its graceful shutdown and re-raises the signal
        # it caught; we end here instead of dying of it, so the background process is stopped.
        stopped.append(signum)
        raise _Stopped

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(
            "ledger.api.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=False,  # ours leaves query strings out; uvicorn's would log them
            proxy_headers=False,  # no proxy is trusted: the access log has no client address
            timeout_graceful_shutdown=30,
            log_level="info",
        )
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        background.stop()


def _options_from_env() -> ServerOptions:
    """`ServerOptions.from_env()`; a malformed `LEDGER_API_*` value ends the command."""
    try:
        return ServerOptions.from_env()
    except ValueError:
        pass
    bad = []
    for name in ServerOptions().to_env():
        if name in os.environ:
            try:
                ServerOptions.from_env({name: os.environ[name]})
            except ValueError:
                bad.append(f"{name}={os.environ[name]!r}")
    err_console.print(f"[red]error[/red] not a number: {', '.join(bad)} (docs/operations.md)")
    raise typer.Exit(2)


class _Stopped(Exception):
    """A stop signal arrived after uvicorn's graceful shutdown."""
