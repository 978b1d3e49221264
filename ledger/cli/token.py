"""`ledger token create | revoke | list`: bearer tokens of the HTTP service."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from ledger.api.tokens import ROLES, TokenStore, check_name, check_role
from ledger.cli.common import (
    err_console,
    fail,
    open_or_explain,
    print_json,
    print_table,
    settings_from_env,
)
from ledger.errors import LedgerError

token_app = typer.Typer(help="Bearer tokens of the HTTP service.", no_args_is_help=True)


@contextmanager
def _store() -> Iterator[TokenStore]:
    """The token store of the environment; a configuration it cannot work with ends the
    command with one `error configuration:` line (exit status 2), as every command does."""
    settings = settings_from_env()
    store = open_or_explain(settings, lambda: TokenStore.open(settings))
    try:
        yield store
    finally:
        store.close()


@token_app.command("create")
def create(
    role: str = typer.Option(..., "--role", help=f"One of: {', '.join(ROLES)}."),
    name: str = typer.Option(
        ...,
        "--name",
        help="Who uses it: the actor of what it writes, kept in the clear (a service name or "
        "staff initials; no e-mail address, CPR or phone number).",
    ),
) -> None:
    """Create a token and print it alone on standard output (it is shown only once)."""
    try:  # before the store: a refused name leaves nothing behind
        check_role(role)
        check_name(name)
    except LedgerError as error:
        fail(error)
    try:
        with _store() as store:
            token, record = store.create(role, name)
    except LedgerError as error:
        fail(error)
    err_console.print(
        f"token {record.id} for '{record.name}' ({record.role}); keep it now, "
        "the ledger stores only its hash"
    )
    print(token)


@token_app.command("revoke")
def revoke(
    token: str = typer.Argument(..., help="The token's id, or a name (revokes all its tokens)."),
) -> None:
    """Revoke a token; servers refuse it within a second."""
    with _store() as store:
        revoked = store.revoke(token)
    if not revoked:
        err_console.print("[red]error[/red] no live token with this id or name")
        raise typer.Exit(1)
    for record in revoked:
        err_console.print(f"revoked {record.id} ('{record.name}', {record.role})")


@token_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="JSON for programs.")) -> None:
    """Every token with its role and name (never the token itself)."""
    with _store() as store:
        records = store.all()
    if as_json:
        print_json([r.to_dict() for r in records])
        return
    print_table(
        "Tokens",
        ["id", "name", "role", "created", "revoked"],
        [(r.id, r.name, r.role, r.created_at, r.revoked_at) for r in records],
    )
