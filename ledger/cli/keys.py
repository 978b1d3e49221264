"""`ledger keys ...`: key store maintenance (status, rewrap, reconcile, reindex)."""

from __future__ import annotations

import contextlib
import os
from collections import Counter

import typer

from ledger.cli.common import err_console, open_ledger, print_json, print_table
from ledger.crypto.master import decode_master_key, new_master_key_text

keys_app = typer.Typer(help="Key store maintenance.", no_args_is_help=True)


@keys_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="JSON for programs.")) -> None:
    """How many data keys are live and how many were shredded, per retention class."""
    with open_ledger() as ledger:
        records = ledger.keystore.records()
    live: Counter[str] = Counter()
    shredded: Counter[str] = Counter()
    for record in records:
        klass = record.scope.split(":")[0]
        (shredded if record.shredded_at else live)[klass] += 1
    rows = [
        {"class": k, "live": live[k], "shredded": shredded[k]}
        for k in sorted(set(live) | set(shredded))
    ]
    if as_json:
        print_json({"keys": rows})
    else:
        print_table("Data keys", ["class", "live", "shredded"], [tuple(r.values()) for r in rows])


@keys_app.command("rewrap")
def rewrap() -> None:
    """Re-encrypt every data key under a new master key.

    With a key file (the default) the file is replaced atomically.

    With LEDGER_MASTER_KEY the new key is printed once on standard output.

    Put it in the environment before the next command, or nothing will open.
    """
    new_text = new_master_key_text()
    with open_ledger() as ledger:
        settings = ledger.settings
        temporary = settings.master_key_file.with_suffix(".new")

        def keep_the_new_key() -> None:
            # Before the key store commits: after that nothing opens without the new key.
            if settings.master_key:
                typer.echo(new_text)  # shown before it is needed, never lost
                return
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(new_text + "\n")
                handle.flush()
                os.fsync(handle.fileno())

        try:
            count = ledger.keystore.rewrap(
                decode_master_key(new_text), before_commit=keep_the_new_key
            )
        except BaseException:
            with contextlib.suppress(OSError):  # e.g. it could not be made at all
                temporary.unlink(missing_ok=True)
            if settings.master_key:
                err_console.print("rewrap failed: keep the old LEDGER_MASTER_KEY")
            raise
    if settings.master_key:
        err_console.print(f"{count} keys rewrapped; set LEDGER_MASTER_KEY to the key above")
        return
    os.replace(temporary, settings.master_key_file)
    err_console.print(f"{count} keys rewrapped; new master key in {settings.master_key_file}")


@keys_app.command("reconcile")
def reconcile() -> None:
    """Destroy any key whose scope was recorded shredded (also runs at every start)."""
    with open_ledger() as ledger:
        count = ledger.reconcile_keys()
    err_console.print(f"{count} keys destroyed")


@keys_app.command("reindex")
def reindex() -> None:
    """Rebuild the identifier lookup index from the sealed identifiers (after a crash)."""
    with open_ledger() as ledger:
        count = ledger.reindex_lookups()
    err_console.print(f"{count} identifiers indexed")
