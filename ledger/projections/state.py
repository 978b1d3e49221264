"""Applying events to read-model rows: one unit of work per batch of notifications.

A batch loads the current rows of every subject it touches, applies the events in memory
and writes back only what changed, together with the tracking position (the recorder does
the writing). The logic mirrors the `DataSubject` aggregate's `apply` methods, so a read
model says what the aggregate would say; handlers tolerate a missing predecessor (an
as-of replay by `occurred_at` may leave one out) by skipping what they cannot place.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventsourcing.utils import get_topic

from ledger.domain.calendar import later
from ledger.domain.policy import PolicyCatalogue
from ledger.domain.retention import scope_due_date
from ledger.domain.subject import DataSubject, consent_widened, retention_class_of, withdraws_all
from ledger.projections.schema import (
    AGREEMENTS,
    COMPETITIONS,
    CONSENT_EVENTS,
    CONSENTS,
    DATA_ITEMS,
    DISCLOSURES,
    ERASURES,
    HOLDS,
    KEYED,
    NOTICES,
    OBJECTIONS,
    PROCESSING,
    RELATIONSHIPS,
    REQUESTS,
    RESTRICTIONS,
    TRANSFERS,
    VIEWS,
    Table,
)
from ledger.projections.schema import SCOPES as SCOPES_T

Row = dict[str, Any]


@dataclass(slots=True)
class EventRecord:
    """What a handler needs from one notification: who, which version, where, what."""

    subject: str
    version: int
    position: int
    topic: str
    state: dict[str, Any]


_KEYED_NAMES = tuple(t.name for t in KEYED)


@dataclass(slots=True)
class SubjectState:
    """Every keyed row of one subject, as loaded plus this batch's changes.

    A subject registered in this batch (`new`) has every row inserted, so only a stored
    subject keeps track of which rows changed or went (in a rebuild that is almost none;
    skipping the bookkeeping for the rest saves 1 % of a rebuild's instructions).
    """

    row: Row
    tables: dict[str, dict[str, Row]]
    dirty: dict[str, set[str]] = field(default_factory=dict)
    deleted: dict[str, set[str]] = field(default_factory=dict)
    new: bool = False
    sid: int = field(init=False)  # the row's key, which every other row of it names

    def __post_init__(self) -> None:
        self.sid = int(self.row["sid"])

    @classmethod
    def empty(cls, row: Row) -> SubjectState:
        return cls(row=row, tables={name: {} for name in _KEYED_NAMES}, new=True)

    def rows(self, table: Table) -> dict[str, Row]:
        return self.tables[table.name]

    def put(self, table: Table, key: str, row: Row) -> None:
        name = table.name
        self.tables[name][key] = row
        if self.new:
            return
        gone = self.deleted.get(name)
        if gone:
            gone.discard(key)
        self.dirty.setdefault(name, set()).add(key)

    def touch(self, table: Table, key: str) -> None:
        if not self.new:
            self.dirty.setdefault(table.name, set()).add(key)

    def remove(self, table: Table, key: str) -> None:
        name = table.name
        if self.tables[name].pop(key, None) is not None and not self.new:
            self.dirty.get(name, set()).discard(key)
            self.deleted.setdefault(name, set()).add(key)

    def changed_rows(self, name: str) -> list[Row]:
        """A stored subject's rows of a table that this batch changed (a new subject's rows
        are all written: `writes_of` takes them from `tables`)."""
        rows = self.tables[name]
        return [rows[k] for k in self.dirty.get(name, ()) if k in rows]


class _Anchors:
    """The part of a subject that retention deadlines read, rebuilt from rows.

    Shaped like `DataSubject` for `ledger.domain.retention.scope_due_date`, so read
    models and the sweeper compute the same deadline with the same code.
    """

    def __init__(self, state: SubjectState) -> None:
        row = state.row
        self.registered_at = row["registered_at"]
        self.relationship_ended_at = row["relationship_ended_at"]
        self.last_dialogue_at = row["last_dialogue_at"]
        self.marketing_registered_at = row["marketing_registered_at"]
        self.erased_at = row["erased_at"]
        self.relationships = state.tables["rm_relationships"]
        self.competitions = {k: r["ends_on"] for k, r in state.tables["rm_competitions"].items()}

    def has_active_relationship(self) -> bool:
        return any(r["active"] for r in self.relationships.values())


def _topic(name: str) -> str:
    return get_topic(getattr(DataSubject, name))


Handler = Callable[["BatchState", SubjectState, EventRecord], None]


class BatchState:
    """The unit of work of one batch: subjects' rows, new log rows, counter increments."""

    def __init__(self, policy: PolicyCatalogue, *, keep_ciphertext: bool = True) -> None:
        self.policy = policy
        self.keep_ciphertext = keep_ciphertext
        self.subjects: dict[str, SubjectState] = {}
        self.logs: dict[str, list[Row]] = {}
        self.counters: Counter[tuple[str, str, str]] = Counter()

    # -- applying ---------------------------------------------------------------------

    def apply(self, record: EventRecord) -> None:
        handler = HANDLERS.get(record.topic)
        if handler is None:
            return  # idempotency receipts and anything else that is not about a subject
        if record.topic == REGISTERED:
            self._register(record)
            return
        state = self.subjects.get(record.subject)
        if state is None:
            return
        handler(self, state, record)
        row = state.row
        if record.version > row["version"]:  # notifications of a subject come in order
            row["version"] = record.version
        row["position"] = record.position

    def log(self, table: Table, row: Row) -> None:
        self.logs.setdefault(table.name, []).append(row)

    def sealed(self, value: dict[str, Any]) -> dict[str, Any]:
        """A sealed value as stored, or (replays for auditors) without its ciphertext."""
        if self.keep_ciphertext:
            return value
        return {k: value[k] for k in ("scope", "kid", "commit") if k in value}

    def _register(self, r: EventRecord) -> None:
        if r.subject in self.subjects:
            return
        s = r.state
        row: Row = {
            "sid": r.position,
            "subject": r.subject,
            "kind": s["kind"],
            "purpose": s["purpose"],
            "legal_basis": s["legal_basis"],
            "provided_by": s.get("provided_by"),
            "registered_at": s["occurred_at"],
            "actor": s.get("actor"),
            "status": "active",
            "restricted": False,
            "restriction_reason": None,
            "erased_at": None,
            "retention_shredded": False,
            "held": False,
            "relationship_active": False,
            "relationship_ended_at": None,
            "last_dialogue_at": None,
            "marketing_registered_at": None,
            "processed": 0,
            "views": 0,
            "version": r.version,
            "position": r.position,
        }
        self.subjects[r.subject] = SubjectState.empty(row)

    # -- derived columns --------------------------------------------------------------

    def finish(self) -> None:
        """Recompute what depends on several rows: status, holds, deadlines, shredding."""
        for state in self.subjects.values():
            row = state.row
            tables = state.tables
            holds = tables["rm_holds"]  # most subjects have none: no generator for them
            held = bool(holds) and any(h["released_at"] is None for h in holds.values())
            row["held"] = held
            row["relationship_active"] = any(
                r["active"] for r in tables["rm_relationships"].values()
            )
            if row["erased_at"] is not None:
                row["status"] = "erased"
            elif row["retention_shredded"]:
                row["status"] = "partially_erased"
            else:
                row["status"] = "active"
            scopes = tables["rm_scopes"]
            if not scopes:
                continue
            anchors = _Anchors(state)
            for key, scope in scopes.items():
                deadline = scope_due_date(anchors, self.policy, key)
                shredded = scope["shredded"]
                if shredded:
                    live = any(k not in shredded for k in scope["kids"])
                    shredded_at = None if live else max(shredded.values())
                else:  # nothing shredded yet, the usual case
                    live, shredded_at = bool(scope["kids"]), None
                derived = {
                    "deadline": deadline.isoformat() if deadline else None,
                    "held": held,
                    "live": live,
                    "shredded_at": shredded_at,
                }
                if state.new:  # every row of it is written: nothing to compare
                    scope.update(derived)
                elif any(scope.get(k) != v for k, v in derived.items()):
                    scope.update(derived)
                    state.touch(SCOPES_T, key)


def _scope(b: BatchState, st: SubjectState, scope: str, position: int) -> Row:
    rows = st.rows(SCOPES_T)
    found = rows.get(scope)
    if found is None:
        found = {
            "sid": st.sid,
            "scope": scope,
            "retention_class": retention_class_of(scope),
            "kids": [],
            "shredded": {},
            "live": False,
            "deadline": None,
            "held": False,
            "shredded_at": None,
            "shred_reason": None,
            "seq": position,
        }
        st.put(SCOPES_T, scope, found)
    return found


def _add_kid(b: BatchState, st: SubjectState, scope: str, kid: str, position: int) -> None:
    row = _scope(b, st, scope, position)
    if kid not in row["kids"]:
        row["kids"] = [*row["kids"], kid]
        st.touch(SCOPES_T, scope)


def on_collected(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    # the most frequent event of all: its fields are read once each
    s = r.state
    category, value, scope, occurred_at = s["category"], s["value"], s["scope"], s["occurred_at"]
    previous = st.rows(DATA_ITEMS).get(category)
    st.put(
        DATA_ITEMS,
        category,
        {
            "sid": st.sid,
            "category": category,
            "value": b.sealed(value),
            "kid": value["kid"],
            "scope": scope,
            "purpose": s["purpose"],
            "legal_basis": s["legal_basis"],
            "source": s["source"],
            "collected_at": occurred_at,
            "cpr_ground": s.get("cpr_ground"),
            "rectified": False,
            "erased": False,
            "seq": previous["seq"] if previous else r.position,
        },
    )
    row = st.row
    if s["source"] == "subject":  # contact, as the aggregate counts it
        row["last_dialogue_at"] = later(row["last_dialogue_at"], occurred_at)
    _add_kid(b, st, scope, value["kid"], r.position)
    if scope == "marketing":
        row["marketing_registered_at"] = later(row["marketing_registered_at"], occurred_at)
    b.counters[("collected", s["purpose"], category)] += 1


def on_rectified(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    previous = st.rows(DATA_ITEMS).get(s["category"])
    if previous is not None:
        previous.update(
            value=b.sealed(s["value"]),
            kid=s["value"]["kid"],
            scope=s["scope"],
            collected_at=s["occurred_at"],
            rectified=True,
            erased=False,
        )
        st.touch(DATA_ITEMS, s["category"])
        b.counters[("rectified", previous["purpose"], s["category"])] += 1
    _add_kid(b, st, s["scope"], s["value"]["kid"], r.position)


def on_consent_given(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    consents = st.rows(CONSENTS)
    current = consents.get(s["purpose"])
    channels, explicit, categories = consent_widened(
        current, s["channels"], bool(s["explicit"]), s["categories"]
    )
    st.put(
        CONSENTS,
        s["purpose"],
        {
            "sid": st.sid,
            "purpose": s["purpose"],
            "active": True,
            "channels": channels,
            "explicit": explicit,
            "categories": categories,
            "notice_version": s["notice_version"],
            "method": s["method"],
            "given_at": s["occurred_at"],
            "withdrawn_at": None,
            "seq": current["seq"] if current else r.position,
        },
    )
    b.log(
        CONSENT_EVENTS,
        {
            "position": r.position,
            "sid": st.sid,
            "purpose": s["purpose"],
            "action": "given",
            "channels": sorted(set(s["channels"])),
            "full_withdrawal": False,
            "explicit": bool(s["explicit"]),
            "method": s["method"],
            "notice_version": s["notice_version"],
            "occurred_at": s["occurred_at"],
            "actor": s.get("actor"),
        },
    )


def on_consent_withdrawn(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    current = st.rows(CONSENTS).get(s["purpose"])
    if current is None:
        return
    before = list(current["channels"])
    full = withdraws_all(before, s["channels"])
    if full:
        current.update(active=False, channels=[], withdrawn_at=s["occurred_at"])
    else:
        current["channels"] = [c for c in before if c not in s["channels"]]
    st.touch(CONSENTS, s["purpose"])
    b.log(
        CONSENT_EVENTS,
        {
            "position": r.position,
            "sid": st.sid,
            "purpose": s["purpose"],
            "action": "withdrawn",
            "channels": [c for c in before if c not in current["channels"]],
            "full_withdrawal": full,
            "explicit": None,
            "method": None,
            "notice_version": None,
            "occurred_at": s["occurred_at"],
            "actor": s.get("actor"),
        },
    )


def on_objected(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    current = st.rows(OBJECTIONS).get(s["purpose"])
    st.put(
        OBJECTIONS,
        s["purpose"],
        {
            "sid": st.sid,
            "purpose": s["purpose"],
            "objected_at": s["occurred_at"],
            "seq": current["seq"] if current else r.position,
        },
    )


def _restriction(b: BatchState, st: SubjectState, r: EventRecord, on: bool) -> None:
    st.row["restricted"] = on
    st.row["restriction_reason"] = r.state.get("reason") if on else None
    b.log(
        RESTRICTIONS,
        {
            "position": r.position,
            "sid": st.sid,
            "action": "restricted" if on else "lifted",
            "reason": r.state.get("reason"),
            "occurred_at": r.state["occurred_at"],
            "actor": r.state.get("actor"),
        },
    )


def on_restricted(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    _restriction(b, st, r, True)


def on_restriction_lifted(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    _restriction(b, st, r, False)


def on_disclosure_agreed(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    current = st.rows(AGREEMENTS).get(s["agreement"])
    name = s["recipient_name"]
    st.put(
        AGREEMENTS,
        s["agreement"],
        {
            "sid": st.sid,
            "agreement": s["agreement"],
            "recipient_kind": s["recipient_kind"],
            "recipient_name": b.sealed(name),
            "name_kid": name["kid"],
            "country": s["country"],
            "categories": list(s["categories"]),
            "purpose": s["purpose"],
            "valid_until": s.get("valid_until"),
            "agreed_at": s["occurred_at"],
            "revoked_at": None,
            "seq": current["seq"] if current else r.position,
        },
    )
    # The name is sealed in the subject's customer_data scope: it goes when that scope goes.
    _add_kid(b, st, name["scope"], name["kid"], r.position)


def on_agreement_revoked(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    current = st.rows(AGREEMENTS).get(r.state["agreement"])
    if current is not None:
        current["revoked_at"] = r.state["occurred_at"]
        st.touch(AGREEMENTS, r.state["agreement"])


def on_disclosed(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    b.log(
        DISCLOSURES,
        {
            "position": r.position,
            "sid": st.sid,
            "agreement": s["agreement"],
            "categories": list(s["categories"]),
            "recipient_kind": s["recipient_kind"],
            "country": s["country"],
            "disclosed_at": s["occurred_at"],
            "actor": s.get("actor"),
        },
    )


def on_transferred(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    b.log(
        TRANSFERS,
        {
            "position": r.position,
            "sid": st.sid,
            "categories": list(s["categories"]),
            "country": s["country"],
            "recipient": s["recipient"],
            "transferred_at": s["occurred_at"],
            "actor": s.get("actor"),
        },
    )


def on_processed(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    st.row["processed"] = int(st.row["processed"]) + 1
    b.log(
        PROCESSING,
        {
            "position": r.position,
            "sid": st.sid,
            "purpose": s["purpose"],
            "activity": s["activity"],
            "channel": s.get("channel"),
            "categories": list(s["categories"]),
            "occurred_at": s["occurred_at"],
            "actor": s.get("actor"),
        },
    )


def on_relationship_started(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    current = st.rows(RELATIONSHIPS).get(s["relationship"])
    st.put(
        RELATIONSHIPS,
        s["relationship"],
        {
            "sid": st.sid,
            "relationship": s["relationship"],
            "active": True,
            "started_at": s["occurred_at"],
            "ended_at": None,
            "seq": current["seq"] if current else r.position,
        },
    )


def on_relationship_ended(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    current = st.rows(RELATIONSHIPS).get(s["relationship"])
    if current is not None:
        current.update(active=False, ended_at=s["occurred_at"])
        st.touch(RELATIONSHIPS, s["relationship"])
    st.row["relationship_ended_at"] = later(st.row["relationship_ended_at"], s["occurred_at"])


def on_dialogue(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    st.row["last_dialogue_at"] = later(st.row["last_dialogue_at"], r.state["occurred_at"])


def on_competition(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    current = st.rows(COMPETITIONS).get(s["competition"])
    st.put(
        COMPETITIONS,
        s["competition"],
        {
            "sid": st.sid,
            "competition": s["competition"],
            "ends_on": s["competition_ends_on"],
            "seq": current["seq"] if current else r.position,
        },
    )


def on_notified(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    b.log(
        NOTICES,
        {
            "position": r.position,
            "sid": st.sid,
            "notice": s["notice"],
            "policy_version": s["policy_version"],
            "purpose": s.get("purpose"),
            "notified_at": s["occurred_at"],
            "actor": s.get("actor"),
        },
    )


def on_hold_placed(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    current = st.rows(HOLDS).get(s["hold"])
    st.put(
        HOLDS,
        s["hold"],
        {
            "sid": st.sid,
            "hold": s["hold"],
            "reason": s["reason"],
            "placed_at": s["occurred_at"],
            "released_at": None,
            "seq": current["seq"] if current else r.position,
        },
    )


def on_hold_released(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    current = st.rows(HOLDS).get(r.state["hold"])
    if current is not None:
        current["released_at"] = r.state["occurred_at"]
        st.touch(HOLDS, r.state["hold"])


def on_request_opened(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    current = st.rows(REQUESTS).get(s["request"])
    st.put(
        REQUESTS,
        s["request"],
        {
            "sid": st.sid,
            "request": s["request"],
            "right_name": s["right"],
            "received_at": s["received_at"],
            "due": s["due"],
            "status": "open",
            "verified_at": None,
            "extended_at": None,
            "extension_reason": None,
            "completed_at": None,
            "outcome": None,
            "seq": current["seq"] if current else r.position,
        },
    )


def _request_update(st: SubjectState, request: str, **changes: Any) -> None:
    current = st.rows(REQUESTS).get(request)
    if current is not None:
        current.update(changes)
        st.touch(REQUESTS, request)


def on_identity_verified(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    _request_update(st, r.state["request"], verified_at=r.state["occurred_at"])


def on_request_extended(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    _request_update(
        st, s["request"], due=s["due"], extended_at=s["occurred_at"], extension_reason=s["reason"]
    )


def on_request_completed(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    _request_update(
        st, s["request"], status="completed", outcome=s["outcome"], completed_at=s["occurred_at"]
    )


def on_erasure(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    st.row["erased_at"] = s["occurred_at"]
    b.log(
        ERASURES,
        {
            "position": r.position,
            "sid": st.sid,
            "request": s.get("request"),
            "shredded": list(s["shredded"]),
            "retained": list(s["retained"]),
            "occurred_at": s["occurred_at"],
            "actor": s.get("actor"),
        },
    )


def on_scope_shredded(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    """Crypto-shredding reaches the read models: every sealed value of those keys goes."""
    s = r.state
    kids = set(s["kids"])
    scope = _scope(b, st, s["scope"], r.position)
    shredded = dict(scope["shredded"])
    for kid in s["kids"]:
        shredded[kid] = s["occurred_at"]
    scope["shredded"] = shredded
    scope["shred_reason"] = s["reason"]
    st.touch(SCOPES_T, s["scope"])
    if s["reason"] != "erasure":
        st.row["retention_shredded"] = True
    for key, item in st.rows(DATA_ITEMS).items():
        if item["kid"] in kids and item["scope"] == s["scope"]:
            item.update(value=None, erased=True)
            st.touch(DATA_ITEMS, key)
    for key, agreement in st.rows(AGREEMENTS).items():
        if agreement["name_kid"] in kids and agreement["recipient_name"] is not None:
            agreement["recipient_name"] = None
            st.touch(AGREEMENTS, key)


def on_viewed(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    s = r.state
    st.row["views"] = int(st.row["views"]) + 1
    stamp = s.get("timestamp")
    b.log(
        VIEWS,
        {
            "position": r.position,
            "sid": st.sid,
            "purpose": s["purpose"],
            "categories": list(s["categories"]),
            "actor": s.get("actor"),
            "occurred_at": s["occurred_at"],
            "recorded_at": stamp.isoformat() if isinstance(stamp, datetime) else stamp,
        },
    )


def _noop(b: BatchState, st: SubjectState, r: EventRecord) -> None:
    """`Registered` is handled by `BatchState._register`."""


REGISTERED = _topic("Registered")

HANDLERS: dict[str, Handler] = {
    REGISTERED: _noop,
    _topic("DataCollected"): on_collected,
    _topic("DataRectified"): on_rectified,
    _topic("ConsentGiven"): on_consent_given,
    _topic("ConsentWithdrawn"): on_consent_withdrawn,
    _topic("Objected"): on_objected,
    _topic("Restricted"): on_restricted,
    _topic("RestrictionLifted"): on_restriction_lifted,
    _topic("DisclosureAgreed"): on_disclosure_agreed,
    _topic("DisclosureAgreementRevoked"): on_agreement_revoked,
    _topic("DataDisclosed"): on_disclosed,
    _topic("DataTransferred"): on_transferred,
    _topic("DataProcessed"): on_processed,
    _topic("RelationshipStarted"): on_relationship_started,
    _topic("RelationshipEnded"): on_relationship_ended,
    _topic("DialogueRecorded"): on_dialogue,
    _topic("CompetitionEntered"): on_competition,
    _topic("SubjectNotified"): on_notified,
    _topic("LegalHoldPlaced"): on_hold_placed,
    _topic("LegalHoldReleased"): on_hold_released,
    _topic("RequestOpened"): on_request_opened,
    _topic("IdentityVerified"): on_identity_verified,
    _topic("RequestExtended"): on_request_extended,
    _topic("RequestCompleted"): on_request_completed,
    _topic("ErasureCarriedOut"): on_erasure,
    _topic("ScopeShredded"): on_scope_shredded,
    _topic("DataViewed"): on_viewed,
}

SUBJECT_TOPICS = frozenset(HANDLERS)


def subjects_to_load(records: Iterable[EventRecord]) -> list[str]:
    """Subjects a batch touches that it does not register itself (their rows are stored)."""
    registered: set[str] = set()
    wanted: dict[str, None] = {}
    for r in records:
        if r.topic not in SUBJECT_TOPICS:
            continue
        if r.topic == REGISTERED:
            registered.add(r.subject)
        elif r.subject not in registered:
            wanted[r.subject] = None
    return list(wanted)
