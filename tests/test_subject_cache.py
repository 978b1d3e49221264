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
