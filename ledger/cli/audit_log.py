"""`ledger audit seal | checkpoint | verify | export | prove | public-key` (DESIGN 5.3).

Registered on the `audit` group of `ledger.cli.audit` by `register`. `verify --bundle`
opens no ledger at all: it needs nothing but the bundle (and optionally a trusted key).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ledger.audit.bundle import verify_bundle
from ledger.audit.keys import SigningKeyError
from ledger.audit.note import NoteError, Verifier
from ledger.audit.store import AuditError
from ledger.cli.common import console, err_console, fail, open_ledger, print_json, print_table
from ledger.errors import LedgerError

__all__ = ["register"]


def _fail(exc: Exception, as_json: bool) -> NoReturn:
    error = exc if isinstance(exc, LedgerError) else LedgerError("invalid_command", str(exc))
    fail(error, as_json=as_json)
    raise typer.Exit(1)  # `fail` has exited already


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on standard error (only on a terminal, so pipes stay clean)."""
    if not enabled or not err_console.is_terminal:
        yield None
        return
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def seal(as_json: bool = typer.Option(False, "--json", help="JSON for programs.")) -> None:
    """Add new events to the Merkle log and sign a checkpoint (done after every write too)."""
    from ledger.audit.service import seal as do_seal

    with open_ledger() as ledger:
        try:
            result = do_seal(ledger)
        except (AuditError, SigningKeyError) as exc:
            _fail(exc, as_json)
    if as_json:
        print_json({"ok": True, **result.as_dict()})
        return
    console.print(f"sealed {result.added} new events; the log has {result.tree_size} leaves")
    if result.checkpoint is not None:
        sys.stdout.write(result.checkpoint.note)


def checkpoint(as_json: bool = typer.Option(False, "--json", help="JSON for programs.")) -> None:
    """Print the latest signed checkpoint (a C2SP signed note)."""
    from ledger.audit.service import latest_checkpoint

    with open_ledger() as ledger:
        try:
            latest = latest_checkpoint(ledger)
        except (AuditError, SigningKeyError) as exc:
            _fail(exc, as_json)
    if as_json:
        print_json({"ok": latest["checkpoint"] is not None, **latest})
    elif latest["checkpoint"] is None:
        err_console.print("no checkpoint yet: the log is empty (run `ledger audit seal`)")
    else:
        sys.stdout.write(latest["checkpoint"])
    if latest["checkpoint"] is None:
        raise typer.Exit(1)


def public_key() -> None:
    """Print the log's public (verifier) key, to publish for auditors."""
    from ledger.audit.service import public_key as vkey

    with open_ledger() as ledger:
        try:
            text = vkey(ledger)
        except SigningKeyError as exc:
            _fail(exc, False)
    sys.stdout.write(text + "\n")


def _trusted_key(value: str | None) -> str | None:
    """`--public-key`: a vkey, or a file holding one."""
    if value is None:
        return None
    path = Path(value)
    text = path.read_text(encoding="utf-8").strip() if path.is_file() else value.strip()
    try:
        Verifier.parse(text)
    except NoteError as exc:
        raise typer.BadParameter(f"--public-key: {exc}") from None
    return text


def verify(
    bundle: Path | None = typer.Option(  # noqa: B008
        None, "--bundle", help="Check an exported bundle offline instead of the ledger."
    ),
    key: str | None = typer.Option(
        None,
        "--public-key",
        help="The verifier key you trust (text or file); default: the ledger's own key, "
        "or with --bundle the bundle's public-key file.",
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON for programs."),
) -> None:
    """Recompute the whole log and check every leaf, node, signature and consistency.

    Exits 0 only if every check holds; otherwise names the first bad leaf.
    """
    trusted = _trusted_key(key)
    if bundle is not None:
        _verify_bundle(bundle, trusted, as_json)
        return
    from ledger.audit.service import verify as do_verify

    with open_ledger() as ledger, _progress("verifying", not as_json) as progress:
        try:
            report = do_verify(ledger, progress=progress, key=trusted)
        except (AuditError, SigningKeyError) as exc:
            _fail(exc, as_json)
    result = report.as_dict()
    if as_json:
        print_json(result)
    else:
        _show_verify(result)
    if not report.ok:
        raise typer.Exit(1)


def _show_verify(result: dict[str, Any]) -> None:
    latest = result["latest"]
    print_table(
        "Audit log",
        ["what", "value"],
        [
            ("events", result["events"]),
            ("leaves sealed", result["leaves"]),
            ("events not yet sealed", result["unsealed"]),
            ("checkpoints", result["checkpoints"]),
            ("latest checkpoint", f"{latest['tree_size']} leaves, root {latest['root']}"),
            ("public key", result["public_key"]),
            ("events/s", result["events_per_second"]),
        ],
    )
    if result["ok"]:
        console.print("[green]OK[/green]: every leaf, node, signature and consistency check holds")
        return
    first = result["first_bad_leaf"]
    if first is not None:
        console.print(
            f"[red]FAILED[/red]: first bad leaf {first.get('leaf_index')}"
            f" (notification {first.get('notification_id', '?')},"
            f" subject {first.get('subject', '?')}, version {first.get('version', '?')})"
        )
    else:
        console.print("[red]FAILED[/red]")
    for failure in result["failures"]:
        more = f" (and {failure['count'] - 1} more)" if failure["count"] > 1 else ""
        console.print(f"  {failure['check']}: {failure['message']}{more}")


def _verify_bundle(bundle: Path, key: str | None, as_json: bool) -> None:
    with _progress("verifying bundle", not as_json) as progress:
        report = verify_bundle(bundle, public_key=key, progress=progress)
    if as_json:
        print_json(report.as_dict())
    else:
        print_table(
            f"Audit bundle {bundle}",
            ["what", "value"],
            [
                ("origin", report.origin),
                ("public key", report.public_key),
                ("leaves", report.leaves),
                ("subjects", report.subjects),
                ("checkpoints", report.checkpoints),
                ("latest checkpoint", f"{report.latest_size} leaves, root {report.latest_root}"),
                ("inclusion proofs checked", report.proofs_checked),
                ("seconds", f"{report.seconds:.2f}"),
            ],
        )
        for check in report.checks:
            console.print(f"  [green]✓[/green] {check}")
        if report.ok:
            console.print("[green]OK[/green]: the bundle proves the history it holds")
            if key is None:
                console.print("  compare the public key with the one the controller published")
        else:
            console.print(f"[red]FAILED[/red]: {report.error}")
    if not report.ok:
        raise typer.Exit(1)


def export(
    out: Path = typer.Option(..., "--out", help="A new or empty folder for the bundle."),  # noqa: B008
    subjects: list[str] = typer.Option(  # noqa: B008
        [], "--subject", help="Add inclusion proofs of this subject's events (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON for programs."),
) -> None:
    """Write the auditor's bundle: checkpoints, leaves, proofs, public key, manifest, format."""
    from ledger.audit.service import export as do_export

    with open_ledger() as ledger, _progress("exporting", not as_json) as progress:
        try:
            result = do_export(ledger, out, subjects=subjects, progress=progress)
        except (AuditError, SigningKeyError, LedgerError) as exc:
            _fail(exc, as_json)
    if as_json:
        print_json({"ok": True, **result})
        return
    console.print(
        f"bundle written to {result['out']}: {result['tree_size']} leaves, "
        f"{result['checkpoints']} checkpoints, {len(result['files'])} files"
    )


def prove(
    subject: str = typer.Option(..., "--subject", help="The subject's id."),
    size: int | None = typer.Option(None, "--size", help="Against this checkpoint size."),
    as_json: bool = typer.Option(False, "--json", help="JSON for programs."),
) -> None:
    """Inclusion proofs of each of a subject's events against the latest checkpoint.

    Seals first, so the latest checkpoint covers every event.

    Exits 1 unless versions 1..n are all in the log and every proof verifies.
    """
    from ledger.audit.service import prove_subject, seal_after_write

    with open_ledger() as ledger:
        try:
            if size is None:
                seal_after_write(ledger)
            result = prove_subject(ledger, subject, size)
        except (AuditError, SigningKeyError, LedgerError) as exc:
            _fail(exc, as_json)
    if as_json:
        print_json({"ok": result["complete"], **result})
    else:
        _show_proof(result)
    if not result["complete"]:
        raise typer.Exit(1)


def _show_proof(result: dict[str, Any]) -> None:
    cp = result["checkpoint"]
    print_table(
        f"Subject {result['subject']}: inclusion proofs against the checkpoint of "
        f"{cp['tree_size']} leaves (root {cp['root']})",
        ["version", "notification", "leaf", "event", "proof"],
        [
            (
                e.get("version"),
                e["notification_id"],
                e.get("leaf_index"),
                str(e.get("topic", "")).rpartition(".")[2],
                ("✓ " + str(len(e["proof"])) + " hashes")
                if e.get("verified")
                else ("not sealed" if not e["included"] else "✗ FAILED"),
            )
            for e in result["events"]
        ],
    )
    n = result["versions"]
    if result["complete"]:
        console.print(
            f"[green]complete[/green]: versions 1..{n} are all in the log, every proof verifies"
        )
    else:
        problems = []
        if not result["contiguous"]:
            problems.append("versions are not 1..n")
        if result["unsealed"]:
            problems.append(f"not sealed: {result['unsealed']}")
        if result["failed"]:
            problems.append(f"proof failed: {result['failed']}")
        console.print(f"[red]incomplete[/red]: {'; '.join(problems)}")
    sys.stdout.write(cp["note"])


def register(app: typer.Typer) -> None:
    """Add the Merkle log's commands to the `audit` group."""
    app.command("seal")(seal)
    app.command("checkpoint")(checkpoint)
    app.command("verify")(verify)
    app.command("export")(export)
    app.command("prove")(prove)
    app.command("public-key")(public_key)
