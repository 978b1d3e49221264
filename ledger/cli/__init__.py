"""The `ledger` command: one Typer app, each area in a module of its own."""

from __future__ import annotations

import typer

from ledger.cli import audit, core, keys, projections, report, serve, token

app = typer.Typer(
    help="Personal data ledger: record processing, answer subjects, prove the history.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("init")(core.init)
app.command("exec")(core.exec_)
app.command("sweep")(core.sweep)
app.add_typer(core.subject_app, name="subject")
app.add_typer(core.requests_app, name="requests")
app.add_typer(keys.keys_app, name="keys")
app.command("serve")(serve.serve)
app.add_typer(token.token_app, name="token")
app.add_typer(projections.projections_app, name="projections")
app.command("report")(report.report)
app.add_typer(audit.audit_app, name="audit")


def main() -> None:
    app()
