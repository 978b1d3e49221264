"""`DataSubject` builds its events without the frozen dataclass's `__init__` (as the
library's mapper builds the events it reads): the events must be exactly what the
dataclass would have built, stored byte for byte alike, and a field missing or unknown
must still be an error."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from eventsourcing.persistence import Mapper

from ledger.domain.subject import DataSubject, _new_event
from ledger.persistence import OrjsonTranscoder
from ledger.policies import load_policy
from tests.command_support import registered_customer

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


class _Sealer:
    def seal(self, subject: str, scope: str, category: str, value: Any) -> dict[str, str]:
        return {"scope": scope, "kid": "k1", "ct": "c2VhbGVk", "commit": "00"}


def _customer() -> DataSubject:
    policy = load_policy(None)
    subject = registered_customer(policy, at=NOW)
    subject.collect(
        policy=policy,
        sealer=_Sealer(),
        category="name",
        value="Kunde",
        purpose="customer_administration",
        legal_basis="contract",
        source="subject",
        occurred_at=NOW,
        actor="crm",
    )
    return subject


def _rebuilt_by_dataclass(event: Any) -> Any:
    """The same event through the dataclass's own `__init__`."""
    given = {f.name: getattr(event, f.name) for f in dataclasses.fields(event) if f.init}
    return type(event)(**given)


def test_events_equal_what_the_dataclass_builds_and_store_alike() -> None:
    subject = _customer()
    events = subject.collect_events()
    assert [type(e).__name__ for e in events] == ["Registered", "DataCollected"]
    mapper: Mapper[uuid.UUID] = Mapper(transcoder=OrjsonTranscoder())
    for event in events:
        twin = _rebuilt_by_dataclass(event)
        assert event == twin
        assert list(vars(event)) == list(vars(twin))  # same order, so the same bytes
        assert mapper.to_stored_event(event) == mapper.to_stored_event(twin)
    registered, collected = events
    assert registered.originator_version == 1 and collected.originator_version == 2
    assert registered.originator_topic == "ledger.domain.subject:DataSubject"
    assert subject.version == 2 and subject.kind == "customer"


def _fields(**given: Any) -> dict[str, Any]:
    """The fields every event of a subject has (its second), and `given`."""
    return {
        "originator_id": uuid.uuid4(),
        "originator_version": 2,
        "timestamp": NOW,
        "occurred_at": NOW.isoformat(),
        "actor": None,
        **given,
    }


def test_a_default_is_filled_in() -> None:
    processed = _fields(
        purpose="marketing", activity="newsletter_sent", channel="email", categories=[]
    )
    assert _new_event(DataSubject.DataProcessed, processed).legal_basis is None


def test_a_missing_or_unknown_field_is_an_error() -> None:
    base = _fields(purpose="marketing")
    assert _new_event(DataSubject.Objected, base).purpose == "marketing"
    without_actor = {k: v for k, v in base.items() if k != "actor"}
    with pytest.raises(TypeError, match="Objected takes"):
        _new_event(DataSubject.Objected, without_actor)
    with pytest.raises(TypeError, match="Objected takes"):
        _new_event(DataSubject.Objected, {**base, "colour": "blue"})
    with pytest.raises(TypeError, match="Objected takes"):  # one unknown for one missing
        _new_event(DataSubject.Objected, {**without_actor, "colour": "blue"})


def test_a_subject_replayed_through_mutate_equals_the_one_that_triggered_its_events() -> None:
    """`trigger_event` applies its events without `mutate`'s checks (the event is the
    aggregate's next by construction); replaying them through `mutate`, checks and all,
    gives the same state, version and time of change."""
    subject = _customer()
    subject.give_consent(
        policy=load_policy(None),
        purpose="marketing",
        notice_version="2018-05-25",
        method="web_form",
        channels=["email"],
        explicit=False,
        categories=[],
        occurred_at=NOW,
        actor=None,
    )
    events = subject.collect_events()
    replayed = None
    for event in events:
        replayed = event.mutate(replayed)
    assert replayed is not None
    assert replayed.version == subject.version == len(events) == 3
    assert replayed.modified_on == subject.modified_on == events[-1].timestamp
    assert vars(replayed) == vars(subject)
