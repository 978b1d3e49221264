"""The retention sweeper (DESIGN 4.2, R15): shred every scope past its deadline.

For every subject, the deadline of each scope comes from its anchors (relationship end,
last dialogue, newest marketing registration, competition end, financial year end). At
`now` the sweeper records `ScopeShredded` for every scope past its deadline that no legal
hold keeps, then destroys the keys (DESIGN 4.3: the event first, so a crash in between is
finished by the key reconciler). Subjects are handled in batches, one transaction each, so
thousands of due scopes cost a few commits rather than thousands.

Idempotent: a shredded scope has no live key generation, so it is never due again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import IntegrityError

from ledger.domain.calendar import local_date
from ledger.domain.retention import due_scopes
from ledger.domain.subject import DataSubject
from ledger.errors import LedgerError
from ledger.logs import get_logger
from ledger.receipts import RECEIPTS_HONOURED, receipt_period
from ledger.sweepers.keys import reconcile_keys

if TYPE_CHECKING:
    from ledger.facade import Ledger

log = get_logger("ledger.sweepers.retention")

SWEEPER_ACTOR = "retention-sweeper"
BATCH = 500
MAX_ATTEMPTS = 8

Progress = Callable[[int, int], None]


@dataclass
class SweepReport:
    now: str
    dry_run: bool
    subjects: int = 0
    shredded: list[dict[str, str]] = field(default_factory=list)
    reconciled_keys: int = 0
    receipt_keys_destroyed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "now": self.now,
            "dry_run": self.dry_run,
            "subjects": self.subjects,
            "shredded": self.shredded,
            "reconciled_keys": self.reconciled_keys,
            "receipt_keys_destroyed": self.receipt_keys_destroyed,
            "seconds": round(self.seconds, 3),
        }


def sweep(
    ledger: Ledger,
    now: datetime,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    batch_size: int = BATCH,
) -> SweepReport:
    """Shred (or, with `dry_run`, list) every scope due at `now`."""
    started = time.perf_counter()
    report = SweepReport(now=now.isoformat(), dry_run=dry_run)
    if not dry_run:
        report.reconciled_keys = reconcile_keys(ledger)
        # idempotency receipts older than they are honoured can confirm nothing any more
        oldest_kept = receipt_period(now - RECEIPTS_HONOURED)
        report.receipt_keys_destroyed = ledger.keystore.drop_receipt_keys(before=oldest_kept)
    subject_ids = list(ledger.subject_ids())
    report.subjects = len(subject_ids)
    done = 0
    for chunk in _chunks(subject_ids, batch_size):
        if dry_run:
            report.shredded.extend(_due(ledger, chunk, now))
        else:
            report.shredded.extend(_shred_batch(ledger, chunk, now))
        done += len(chunk)
        if progress:
            progress(done, len(subject_ids))
    if report.shredded and not dry_run:
        ledger.keystore.compact()
    report.seconds = time.perf_counter() - started
    log.info(
        "sweep",
        now=report.now,
        dry_run=dry_run,
        subjects=report.subjects,
        scopes=len(report.shredded),
        reconciled_keys=report.reconciled_keys,
        seconds=round(report.seconds, 3),
    )
    return report


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _due(ledger: Ledger, subject_ids: Sequence[str], now: datetime) -> list[dict[str, str]]:
    today = local_date(now)
    found = []
    for subject_id in subject_ids:
        subject = ledger.app.load_subject(subject_id)
        for due in due_scopes(subject, ledger.policy, today):
            found.append(
                {"subject": subject_id, "scope": due.scope, "deadline": due.deadline.isoformat()}
            )
    return found


def _shred_batch(ledger: Ledger, subject_ids: Sequence[str], now: datetime) -> list[dict[str, str]]:
    """Record the shreddings of one batch of subjects in one transaction, then destroy keys."""
    today = local_date(now)
    for attempt in range(MAX_ATTEMPTS):
        changed: list[DataSubject] = []
        records: list[dict[str, str]] = []
        keys: list[tuple[str, str, list[str]]] = []
        for subject_id in subject_ids:
            subject = ledger.app.load_subject(subject_id)
            due = due_scopes(subject, ledger.policy, today)
            for item in due:
                kids = subject.shred_scope(
                    scope=item.scope,
                    reason=item.reason,
                    deadline=item.deadline,
                    occurred_at=now,
                    actor=SWEEPER_ACTOR,
                )
                keys.append((subject_id, item.scope, kids))
                records.append(
                    {
                        "subject": subject_id,
                        "scope": item.scope,
                        "deadline": item.deadline.isoformat(),
                    }
                )
            if due:
                changed.append(subject)
        if not changed:
            return []
        try:
            ledger.app.save(*changed)
        except IntegrityError:
            # A subject changed meanwhile (a new command, or another sweeper): reload.
            time.sleep(0.001 * 2**attempt)
            continue
        ledger.keystore.shred_many(keys, compact=False)
        return records
    raise LedgerError("conflict", "subjects kept changing during the sweep; run it again")
