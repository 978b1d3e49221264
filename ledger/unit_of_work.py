"""A unit of work: what one transaction of commands will write, and the sealer it seals with.

The application changes the subjects of a unit of work in place, gathers its receipts
and index rows, and saves everything together; a group commit undoes one rejected
command with a `Checkpoint`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ledger.crypto.keystore import KeyConflict, KeySession
from ledger.crypto.sealing import seal
from ledger.domain.subject import DataSubject
from ledger.receipts import CommandReceipt


def _shredding_pending(subject: DataSubject, kid: str) -> bool:
    """Whether this key's shredding is among the subject's events not yet saved."""
    return any(
        isinstance(event, DataSubject.ScopeShredded) and kid in event.kids
        for event in subject.pending_events
    )


class ScopeSealer:
    """Seals values for one unit of work with the keys of its key session."""

    def __init__(self, session: KeySession, uow: UnitOfWork | None = None) -> None:
        self.session = session
        self.uow = uow

    def seal(self, subject: str, scope: str, category: str, value: Any) -> dict[str, str]:
        key = self.session.key_for_sealing(subject, scope)
        loaded = self.uow.subjects.get(subject) if self.uow is not None else None
        if loaded is not None and key.kid in loaded.scopes.get(scope, {}).get("shredded", {}):
            if _shredding_pending(loaded, key.kid):
                # An earlier command of this unit of work shredded the scope (an erasure,
                # then a bookkeeping entry for the same year): a new generation, as for a
                # returning customer. Retrying could never help: the erasure comes again.
                key = self.session.renew(subject, scope)
            else:
                # The session read its keys before the subject was loaded, and another
                # process shredded the scope in between: retry with freshly read keys.
                raise KeyConflict("the scope was shredded while this unit of work ran")
        sealed = seal(
            key.cipher, subject=subject, scope=scope, kid=key.kid, category=category, value=value
        )
        return sealed.to_dict()


@dataclass
class Checkpoint:
    """The state of a unit of work before one command of a group."""

    subject_id: str | None
    subject: DataSubject | None  # a copy, unless `unchanged`
    unchanged: bool  # loaded and not changed yet: reload instead of copying
    receipts: int
    lookups: dict[str, bytes] | None


@dataclass
class UnitOfWork:
    """Everything one transaction will write."""

    registered: set[str] = field(default_factory=set)  # chosen ids already in the store
    subjects: dict[str, DataSubject] = field(default_factory=dict)
    receipts: list[CommandReceipt] = field(default_factory=list)
    lookups: dict[str, dict[str, bytes]] = field(default_factory=dict)
    # read once per unit of work, not per command, and never kept beyond it: the sweeper
    # destroys a week's key when its receipts are no longer honoured
    receipt_keys: dict[str, bytes] = field(default_factory=dict)

    def checkpoint(self, subject_id: str | None) -> Checkpoint:
        """What one command may change, so a rejected command can be undone in a group.

        A subject this unit of work has not changed yet is not copied: undoing means
        loading it again.
        """
        subject = self.subjects.get(subject_id) if subject_id else None
        lookups = dict(self.lookups.get(subject_id, {})) if subject_id else None
        unchanged = subject is not None and not subject.pending_events
        copied = None if unchanged else copy.deepcopy(subject)
        return Checkpoint(subject_id, copied, unchanged, len(self.receipts), lookups)

    def restore(self, saved: Checkpoint | None, load: Callable[[str], DataSubject]) -> None:
        if saved is None:
            return
        del self.receipts[saved.receipts :]
        subject_id = saved.subject_id
        if subject_id is None:
            return
        if saved.unchanged:
            self.subjects[subject_id] = load(subject_id)
        elif saved.subject is None:
            self.subjects.pop(subject_id, None)
        else:
            self.subjects[subject_id] = saved.subject
        if not saved.lookups:
            self.lookups.pop(subject_id, None)
        else:
            self.lookups[subject_id] = saved.lookups

    def registered_now(self, subject_ids: Iterable[str] | None = None) -> set[str]:
        """The subjects this unit of work registers (their first event is pending), of
        these subjects if given."""
        return {
            subject_id
            for subject_id, subject in self._chosen(subject_ids)
            if subject.pending_events and subject.pending_events[0].originator_version == 1
        }

    def lookup_rows(self) -> list[tuple[str, str, bytes]]:
        """The index rows to write: (subject, kind, digest)."""
        return [
            (subject_id, kind, digest)
            for subject_id, kinds in self.lookups.items()
            for kind, digest in kinds.items()
        ]

    def shredded_keys(
        self, subject_ids: Iterable[str] | None = None
    ) -> list[tuple[str, str, list[str]]]:
        """The keys that the pending `ScopeShredded` events say must be destroyed (of
        these subjects, if given)."""
        return [
            (subject_id, event.scope, list(event.kids))
            for subject_id, subject in self._chosen(subject_ids)
            for event in subject.pending_events
            if isinstance(event, DataSubject.ScopeShredded)
        ]

    def _chosen(self, subject_ids: Iterable[str] | None) -> Iterable[tuple[str, DataSubject]]:
        if subject_ids is None:
            return self.subjects.items()
        return ((s, self.subjects[s]) for s in subject_ids if s in self.subjects)
