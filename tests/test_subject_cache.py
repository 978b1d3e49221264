"""The aggregate cache: fast, and never the reason a rule is checked against stale state.

Each ledger keeps the subjects it saw in memory; another ledger on the same store (another
process, in production) may write to them meanwhile. Before a unit of work runs, one query
brings every cached subject of the unit up to date.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest

from ledger.app import project
from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.facade import Ledger
from tests.test_rules import consent, fails, ok, process, register, simple


@pytest.fixture
def other(settings: Settings, clock: FixedClock) -> Iterator[Ledger]:
    """A second ledger on the same store, with its own cache."""
    with Ledger.open(settings, clock=clock) as opened:
        yield opened


def test_a_rule_sees_what_another_ledger_wrote(ledger: Ledger, other: Ledger) -> None:
    subject = register(ledger)
    ok(ledger, consent(subject, "marketing", channels=["email"]))
    ok(ledger, process(subject, "marketing", channel="email"))  # cached in `ledger` now
    ok(other, simple("withdraw_consent", subject, purpose="marketing"))
    fails(ledger, process(subject, "marketing", channel="email"), "consent_required")
    ok(other, consent(subject, "marketing", channels=["email"]))
    ok(ledger, process(subject, "marketing", channel="email"))
    versions = [e["version"] for e in ledger.history(subject)]
    assert versions == list(range(1, len(versions) + 1))


def test_a_group_brings_every_cached_subject_up_to_date(ledger: Ledger, other: Ledger) -> None:
    subjects = [register(ledger) for _ in range(5)]
    for subject in subjects:
        ok(ledger, consent(subject, "marketing", channels=["email"]))
    for subject in subjects[::2]:
        ok(other, simple("withdraw_consent", subject, purpose="marketing"))
    results = ledger.app.execute_many(
        [process(s, "marketing", channel="email") for s in subjects], atomic=False
    )
    codes = [r["error"]["code"] if not r["ok"] else None for r in results]
    assert codes == ["consent_required", None, "consent_required", None, "consent_required"]
    for subject in subjects:
        history = ledger.history(subject)
        assert [e["version"] for e in history] == list(range(1, len(history) + 1))


def test_subjects_are_loaded_with_one_query_per_unit_of_work(ledger: Ledger) -> None:
    subjects = [register(ledger) for _ in range(20)]
    queries: list[Any] = []
    original = ledger.app.queries.events_after

    def counting(versions: Any) -> Any:
        queries.append(dict(versions))
        return original(versions)

    ledger.app.queries.events_after = counting  # type: ignore[method-assign]
    results = ledger.execute_many([simple("record_dialogue", s) for s in subjects])
    assert all(r["ok"] for r in results)
    assert len(queries) == 1 and len(queries[0]) == len(subjects)


def test_snapshots_are_taken_as_saved_and_load_to_the_same_state(
    ledger: Ledger, settings: Settings, clock: FixedClock
) -> None:
    subject = register(ledger)
    ok(ledger, consent(subject, "marketing", channels=["email"]))
    for _ in range(40):
        ok(ledger, simple("record_dialogue", subject))
    # one unit of work crossing versions 50 and 100: one snapshot, of the state as saved
    assert all(r["ok"] for r in ledger.execute_many([simple("record_dialogue", subject)] * 70))
    app = ledger.app
    uid = UUID(subject)
    assert app.snapshots is not None
    assert [s.originator_version for s in app.snapshots.get(uid)] == [112]
    with Ledger.open(settings, clock=clock) as fresh:  # an empty cache: snapshot + events
        loaded = fresh.app.load_subject(subject)
    replayed = project(None, app.events.get(uid))
    assert loaded.version == replayed.version == 112
    assert _state(loaded) == _state(replayed)


def _state(subject: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(subject).items() if k not in ("_pending_events",)}


def _as_stored(settings: Settings, clock: FixedClock, subject: str) -> dict[str, Any]:
    """The subject as a ledger with an empty cache loads it from the store."""
    with Ledger.open(settings, clock=clock) as fresh:
        return _state(fresh.app.load_subject(subject))


def test_rejected_commands_leave_nothing_in_the_cache(
    ledger: Ledger, settings: Settings, clock: FixedClock
) -> None:
    """A unit of work changes cached subjects in place; what it does not save, it drops."""
    subjects = [register(ledger) for _ in range(3)]
    ok(ledger, consent(subjects[0], "marketing", channels=["email"]))
    group = [
        process(subjects[0], "marketing", channel="email"),
        process(subjects[1], "marketing", channel="email"),  # no consent: rejected
        simple("record_dialogue", subjects[1]),
        simple("restrict", subjects[2], reason="disputed accuracy"),
        process(subjects[2], "marketing", channel="email"),  # changed above; rejected
    ]
    results = ledger.app.execute_many(group, atomic=False)
    assert [r["ok"] for r in results] == [True, False, True, True, False]
    batch = [simple("record_dialogue", subjects[0]), group[1]]
    assert not ledger.app.execute_many(batch)[0]["ok"]  # atomic: all rolled back
    for subject in subjects:
        assert _state(ledger.app.load_subject(subject)) == _as_stored(settings, clock, subject)


class RacingClock(FixedClock):
    """A clock that, when next read, first lets another ledger write: the unit of work that
    reads it has loaded its subjects already, so it loses the race when it saves."""

    race: Any = None

    def now(self) -> Any:
        race, self.race = self.race, None
        if race is not None:
            race()
        return super().now()


def test_a_unit_of_work_that_loses_a_race_starts_again_from_the_store(
    settings: Settings, clock: FixedClock, other: Ledger
) -> None:
    racing = RacingClock(clock.now())
    with Ledger.open(settings, clock=racing) as ledger:
        subject = register(ledger)
        ok(ledger, simple("record_dialogue", subject))  # cached in `ledger`
        racing.race = lambda: ok(other, simple("record_dialogue", subject))
        ok(ledger, simple("record_dialogue", subject))
        assert racing.race is None  # the race did run
        versions = [e["version"] for e in ledger.history(subject)]
        assert versions == [1, 2, 3, 4]
        assert _state(ledger.app.load_subject(subject)) == _as_stored(settings, clock, subject)
