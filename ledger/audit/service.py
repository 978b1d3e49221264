"""The audit log for front ends (CLI, HTTP, Python): one call per question, on a `Ledger`.

- `seal(ledger)`: add new events to the log and sign a checkpoint;
- `seal_after_write(ledger)`: the same for the after-write hook (never fails the write);
- `AutoSealer`: for long-running processes, seals at least every second or 1,000 events;
- `latest_checkpoint(ledger)`: the latest signed note with its size and root;
- `proof(ledger, subject=, leaf=, first=, size=)`: what `GET /v1/audit/proof` answers;
- `prove_subject`, `prove_event`, `prove_consistency`: the same, one question each;
- `verify(ledger)`, `export(ledger, out)`: the auditor's checks and bundle.

Each `Ledger` gets one `AuditLog` (its own database connection), made on first use and
closed with the ledger object.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ledger.audit.bundle import export_bundle
from ledger.audit.keys import DEFAULT_ORIGIN, SigningKeyError, load_signer
from ledger.audit.log import AuditLog, SealResult, b64
from ledger.audit.merkle import ProofError
from ledger.audit.note import Verifier
from ledger.audit.store import AuditError, AuditStore
from ledger.audit.verify import Failure, Progress, VerifyReport, verify_store
from ledger.audit.witness import WITNESS_FILE, Witness
from ledger.errors import LedgerError, unknown_subject
from ledger.logs import get_logger

if TYPE_CHECKING:
    from ledger.facade import Ledger

__all__ = [
    "AutoSealer",
    "audit_log",
    "export",
    "latest_checkpoint",
    "proof",
    "prove_consistency",
    "prove_event",
    "prove_subject",
    "public_key",
    "seal",
    "seal_after_write",
    "verify",
]

log = get_logger("ledger.audit")

_logs: weakref.WeakKeyDictionary[Any, AuditLog] = weakref.WeakKeyDictionary()
_logs_lock = threading.Lock()


def audit_log(ledger: Ledger) -> AuditLog:
    """The ledger's Merkle log (opened once per `Ledger`; the signing key made if missing)."""
    with _logs_lock:
        found = _logs.get(ledger)
        if found is not None:
            return found
        store = _open_store(ledger)
        try:
            signer = load_signer(ledger.settings)
        except SigningKeyError:
            store.close()
            raise
        origin = store.meta("origin") or DEFAULT_ORIGIN
        witness = Witness(ledger.settings.home / WITNESS_FILE)
        opened = AuditLog(store, signer.verifier, signer=signer, origin=origin, witness=witness)
        _logs[ledger] = opened
        weakref.finalize(ledger, store.close)
        return opened


def _open_store(ledger: Ledger) -> AuditStore:
    table = getattr(ledger.app.recorder, "events_table_name", "stored_events")
    return AuditStore.open(ledger.settings.database, table)


def _error(exc: Exception) -> LedgerError:
    return LedgerError("invalid_command", str(exc))


# -- sealing ------------------------------------------------------------------------------


def seal(ledger: Ledger) -> SealResult:
    """Seal every new event and sign a checkpoint; AuditError if the log refuses."""
    return audit_log(ledger).seal()


def seal_after_write(ledger: Ledger) -> None:
    """Seal after a write; a refusal (a damaged log) is logged and shown, not raised.

    The write it follows has happened; failing it now would only hide the result from
    the caller. `ledger audit verify` is where a damaged log makes a command fail.
    """
    refusal = seal_up_to_date(ledger)
    if refusal is not None:
        print(f"warning: the audit log was not sealed: {refusal}", file=sys.stderr)


def seal_up_to_date(ledger: Ledger) -> str | None:
    """Seal what is new, if anything; a refusal is logged and returned, not raised.

    The HTTP server calls it before an audit answer, so the answer covers every event
    recorded before the request, as the CLI's does (its background work seals within a
    second, which a caller who has just written would see as missing).
    """
    try:
        result = seal(ledger)
    except (AuditError, SigningKeyError) as exc:
        log.error("audit_seal_failed", error=str(exc))
        return str(exc)
    if result.added:
        log.info("audit_sealed", added=result.added, tree_size=result.tree_size)
    return None


class AutoSealer:
    """Seal in a long-running process at least every `interval` seconds or `batch` events.

    Call `tick(ledger, written)` after each write (with how many events it wrote) and
    from a timer; it seals when either bound is reached. Thread-safe.
    """

    def __init__(self, interval: float = 1.0, batch: int = 1000) -> None:
        self.interval = interval
        self.batch = batch
        self._lock = threading.Lock()
        self._since = 0
        self._last = time.monotonic()

    def tick(self, ledger: Ledger, written: int = 0) -> SealResult | None:
        with self._lock:
            self._since += written
            due = self._since >= self.batch or time.monotonic() - self._last >= self.interval
            if not due:
                return None
            self._since = 0
            self._last = time.monotonic()
        return seal(ledger)


# -- reading ------------------------------------------------------------------------------


def public_key(ledger: Ledger) -> str:
    """The verifier key (C2SP vkey text) auditors check checkpoints with."""
    return audit_log(ledger).verifier.vkey()


def latest_checkpoint(ledger: Ledger) -> dict[str, Any]:
    """`{"checkpoint": signed note, "tree_size", "root", "created_at", "public_key"}`.

    `checkpoint` is None before the first event is sealed.
    """
    audit = audit_log(ledger)
    cp = audit.latest()
    if cp is None:
        return {
            "checkpoint": None,
            "tree_size": 0,
            "root": None,
            "created_at": None,
            "public_key": audit.verifier.vkey(),
        }
    return {
        "checkpoint": cp.note,
        "tree_size": cp.tree_size,
        "root": b64(cp.root),
        "created_at": cp.created_at,
        "public_key": audit.verifier.vkey(),
    }


def prove_subject(ledger: Ledger, subject_id: str, size: int | None = None) -> dict[str, Any]:
    """Inclusion proofs of every event of a subject against a checkpoint (default latest),
    each verified, and whether the versions 1..n are all there."""
    try:
        subject = UUID(subject_id)
    except ValueError:
        raise unknown_subject(subject_id) from None
    try:
        return audit_log(ledger).prove_subject(subject, size)
    except AuditError as exc:
        if str(exc).startswith("no events"):
            raise unknown_subject(subject_id) from None
        raise _error(exc) from None


def prove_event(ledger: Ledger, notification_id: int, size: int | None = None) -> dict[str, Any]:
    """The inclusion proof of one event (by notification id) against a checkpoint."""
    try:
        cp, proofs = audit_log(ledger).prove_events([notification_id], size)
    except AuditError as exc:
        raise _error(exc) from None
    return {
        "checkpoint": {"tree_size": cp.tree_size, "root": b64(cp.root), "note": cp.note},
        **proofs[0],
    }


def prove_leaf(ledger: Ledger, leaf_index: int, size: int | None = None) -> dict[str, Any]:
    """The inclusion proof of the event at one leaf index."""
    audit = audit_log(ledger)
    with audit.store.reader() as s:
        notification = s.leaf_notification(leaf_index)
    if notification is None:
        raise LedgerError("invalid_command", f"no leaf {leaf_index} in the log")
    return prove_event(ledger, notification, size)


def prove_consistency(ledger: Ledger, first: int, size: int | None = None) -> dict[str, Any]:
    """A consistency proof from the checkpoint of `first` leaves to `size` (default latest)."""
    try:
        return audit_log(ledger).prove_consistency(first, size)
    except (AuditError, ProofError) as exc:
        raise _error(exc) from None


def proof(
    ledger: Ledger,
    *,
    subject: str | None = None,
    leaf: int | None = None,
    first: int | None = None,
    size: int | None = None,
) -> dict[str, Any]:
    """`GET /v1/audit/proof`: exactly one of `subject`, `leaf` or `first`, against `size`."""
    given = [v for v in (subject, leaf, first) if v is not None]
    if len(given) != 1:
        raise LedgerError("invalid_command", "give exactly one of subject, leaf or first")
    if subject is not None:
        return prove_subject(ledger, subject, size)
    if leaf is not None:
        return prove_leaf(ledger, leaf, size)
    assert first is not None
    return prove_consistency(ledger, first, size)


# -- the auditor's checks -----------------------------------------------------------------


def verify(
    ledger: Ledger, *, progress: Progress | None = None, key: str | None = None
) -> VerifyReport:
    """Recompute and check the whole log (`ledger audit verify`); it never seals.

    The key comes from the ledger's signing key, or `key` (a vkey an auditor trusts),
    never from the database, which is what is being checked. Where there is no signing
    key (a copy of the database), `key` is needed, and none is made.

    Refusals: `SigningKeyError` when there is no signing key and no `key`;
    `AuditError` when the log was never sealed (events, but no trace of a seal: no
    leaf, no checkpoint, no recorded key, no witness), pointing to `ledger audit seal`.
    An empty log never sealed verifies (there is nothing to check); like `ledger audit
    checkpoint` on a fresh ledger, that makes the signing key if there is none.
    """
    settings = ledger.settings
    has_signing_key = bool(settings.signing_key) or settings.signing_key_file.exists()
    if not has_signing_key:
        store = _open_store(ledger)
        try:
            events = _never_sealed(ledger, store)
            if events is None and key is None:
                raise SigningKeyError(
                    "no signing key here (LEDGER_HOME/signing.key or LEDGER_SIGNING_KEY) to "
                    "check the checkpoints with: give the ledger's public key with "
                    "--public-key (`ledger audit public-key` prints it where the key is)",
                )
            if events is not None and events > 0:
                raise _not_sealed(events)
            if key is not None:
                origin = store.meta("origin") or DEFAULT_ORIGIN
                return verify_store(store, Verifier.parse(key), origin=origin, progress=progress)
        finally:
            store.close()
        # an empty log, never sealed: nothing to check, and no key to mistake for another
    audit = audit_log(ledger)
    events = _never_sealed(ledger, audit.store)
    if events is not None and events > 0:
        raise _not_sealed(events)
    verifier = Verifier.parse(key) if key else audit.verifier
    try:
        witnessed = audit.witness.read(audit.verifier, audit.origin) if audit.witness else None
        unreadable = None
    except AuditError as exc:  # e.g. kept under another key: a failure to report
        witnessed, unreadable = None, str(exc)
    report = verify_store(
        audit.store, verifier, origin=audit.origin, progress=progress, witnessed=witnessed
    )
    if unreadable is not None:
        report.fail(Failure("witness", unreadable))
    return report


def _never_sealed(ledger: Ledger, store: AuditStore) -> int | None:
    """How many events the database holds if nothing was ever sealed here; else None.

    "Never sealed": no leaf, no checkpoint, no public key recorded in the database, and
    no audit witness in LEDGER_HOME. Any one of them left means a seal happened, and
    `verify` must check what is there (a log emptied by someone is a failure to find,
    not a log to seal again).
    """
    if (ledger.settings.home / WITNESS_FILE).exists():
        return None
    with store.reader() as s:
        size, _ = s.tree_state()
        if size or s.latest_checkpoint() is not None or s.meta("public_key") is not None:
            return None
        rows = s.execute(f"SELECT COUNT(*) FROM {s.events_table}")
    return int(rows[0][0] or 0)


def _not_sealed(events: int) -> AuditError:
    held = "1 event" if events == 1 else f"{events} events"
    return AuditError(
        f"the audit log was never sealed: the database holds {held} and no checkpoint, "
        "so there is nothing to check them against. Run `ledger audit seal` (it seals "
        "them and signs the first checkpoint), then verify again; the CLI and the HTTP "
        "server seal after every write, the Python API (Ledger.execute) does not. If this "
        "log was sealed before, its audit tables were emptied: investigate before sealing"
    )


def export(
    ledger: Ledger,
    out: Path,
    *,
    subjects: tuple[str, ...] | list[str] = (),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the auditor's bundle (sealing first, so it covers every event)."""
    audit = audit_log(ledger)
    audit.seal()
    for subject in subjects:
        try:
            UUID(subject)
        except ValueError:
            raise unknown_subject(subject) from None
    return export_bundle(
        audit,
        out,
        subjects=subjects,
        controller=ledger.policy.controller.name,
        progress=progress,
    )
