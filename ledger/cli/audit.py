"""`ledger audit ...`: the auditor's commands (the audit module adds seal, verify, prove ...)."""

from __future__ import annotations

import typer

from ledger.cli import audit_log, audit_replay

audit_app = typer.Typer(
    help="Audit: replay history as of a moment, prove it.", no_args_is_help=True
)
audit_app.command("replay")(audit_replay.replay)
audit_log.register(audit_app)  # seal, checkpoint, verify, export, prove, public-key
