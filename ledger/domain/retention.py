"""Retention deadlines (DESIGN 4.2): when each of a subject's scopes must be gone.

"N months after" is calendar arithmetic on the Copenhagen date of the anchor event.
A deadline is the first day the data may no longer exist: the sweeper shreds a scope
on or after it, unless a legal hold keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from ledger.domain.calendar import add_months, add_years, local_date, parse_iso
from ledger.domain.policy import PolicyCatalogue, RetentionClass

if TYPE_CHECKING:
    from ledger.domain.subject import DataSubject


class RetentionAnchors(Protocol):
    """What a deadline is computed from. The aggregate has it, and so do the read models'
    rows (`ledger.projections.state`) and the audit's replay (`ledger.audit.compliance`):
    all three count deadlines with this one rule, from the anchors each keeps itself."""

    @property
    def registered_at(self) -> str | None: ...
    @property
    def relationship_ended_at(self) -> str | None: ...
    @property
    def last_dialogue_at(self) -> str | None: ...
    @property
    def marketing_registered_at(self) -> str | None: ...
    @property
    def competitions(self) -> Mapping[str, str]: ...
    @property
    def relationships(self) -> Mapping[str, Any]: ...
    def has_active_relationship(self) -> bool: ...


class ErasureAnchors(RetentionAnchors, Protocol):
    """The anchors and the day of the subject's erasure, if any."""

    @property
    def erased_at(self) -> str | None: ...


@dataclass(frozen=True)
class DueScope:
    scope: str
    deadline: date
    reason: str = "retention"  # or "erasure": finishing an erasure a hold had delayed


def _after(klass: RetentionClass, anchor: date) -> date:
    return _shifted(anchor, klass.months, klass.years)


@lru_cache(maxsize=4096)
def _shifted(anchor: date, months: int, years: int) -> date:
    """Cached: the read models ask for the same few (a financial year's end, the days
    customers signed up on) for every subject."""
    return add_years(add_months(anchor, months), years)


def _date_of(text: str | None) -> date | None:
    return local_date(parse_iso(text)) if text else None


def scope_deadline(subject: RetentionAnchors, policy: PolicyCatalogue, scope: str) -> date | None:
    """The scope's deadline, or None while nothing starts its clock (an active relationship)."""
    class_name, _, qualifier = scope.partition(":")
    klass = policy.retention.get(class_name)
    if klass is None:
        return None
    anchor: date | None
    if klass.anchor == "financial_year_end":
        # "5 years from the end of the financial year": the year ends as 1 January begins,
        # so the record is kept through 31 December five years on, and due the day after
        anchor = date(int(qualifier) + 1, 1, 1)
    elif klass.anchor == "competition_end":
        ends_on = subject.competitions.get(qualifier)
        anchor = date.fromisoformat(ends_on) if ends_on else None
    elif klass.anchor == "newest_registration":
        anchor = _date_of(subject.marketing_registered_at)
    elif klass.anchor in ("relationship_end", "relationship_end_or_last_dialogue"):
        if subject.has_active_relationship():
            return None
        # A dialogue after a relationship ended moves only the class anchored on it
        # (customer_data); without any relationship, registration and dialogue count.
        # Dialogue is contact from the subject: a recorded dialogue, data they gave us,
        # and a competition they entered, which lasts until the competition ends.
        dialogue = klass.anchor == "relationship_end_or_last_dialogue" or not subject.relationships
        competitions = [date.fromisoformat(d) for d in subject.competitions.values()]
        candidates = [
            d
            for d in (
                _date_of(subject.relationship_ended_at),
                _date_of(subject.last_dialogue_at) if dialogue else None,
                None if subject.relationships else _date_of(subject.registered_at),
                *(competitions if dialogue else []),
            )
            if d is not None
        ]
        anchor = max(candidates) if candidates else None
    else:  # pragma: no cover - the catalogue validates anchors
        anchor = None
    return _after(klass, anchor) if anchor else None


def _erasure_date(subject: ErasureAnchors, policy: PolicyCatalogue, scope: str) -> date | None:
    """The day of the subject's erasure, for a scope that no legal obligation keeps (what
    only a legal hold kept is due from then, as soon as the hold is released)."""
    erased_on = _date_of(subject.erased_at)
    klass = policy.retention.get(scope.split(":")[0])
    if erased_on is None or (klass is not None and klass.legal_obligation):
        return None
    return erased_on


def scope_due_date(subject: ErasureAnchors, policy: PolicyCatalogue, scope: str) -> date | None:
    """The day a scope is due for shredding: its deadline, or the day of the subject's
    erasure if that came first (`due_scopes` as a date, for read models and views)."""
    candidates = [
        d
        for d in (scope_deadline(subject, policy, scope), _erasure_date(subject, policy, scope))
        if d is not None
    ]
    return min(candidates) if candidates else None


def due_scopes(subject: DataSubject, policy: PolicyCatalogue, today: date) -> list[DueScope]:
    """Scopes due by `today` that no legal hold keeps: past their deadline, or left over
    from an erasure (a released hold kept them; the erasure is finished as soon as nothing
    keeps the data any more). What a legal obligation keeps waits for its own deadline."""
    if subject.active_holds():
        return []
    due: list[DueScope] = []
    for scope in subject.scopes_in_use():
        deadline = scope_deadline(subject, policy, scope)
        erased_on = _erasure_date(subject, policy, scope)
        if deadline is not None and today >= deadline:
            due.append(DueScope(scope, deadline))
        elif erased_on is not None and today >= erased_on:
            due.append(DueScope(scope, erased_on, "erasure"))
    return due
