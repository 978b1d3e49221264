"""Property: read models kept incrementally (in batches of any size, at any moments) equal a
fresh rebuild from the first event, and `subject show` from them equals the aggregate's
view, for random command sequences, on SQLite and PostgreSQL. The audit's own replay of
the log (`ledger.audit.compliance`) keeps the same consents, objections and retention
anchors as the aggregate, and so counts the same deadlines.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.audit.compliance import HistoryChecker
from ledger.clock import FixedClock
from ledger.domain.retention import scope_deadline
from ledger.facade import Ledger
from ledger.projections.views import canonical
from tests.projection_support import (
    START,
    StoryRunner,
    aggregate_views_match,
    fresh_ledger,
    step,
    tables,
)

EXAMPLES = {"sqlite": 60, "postgres": 25}


def _check(backend: str, steps: list[tuple[Any, ...]]) -> None:
    clock = FixedClock(START)
    with fresh_ledger(backend, clock) as ledger:
        runner = StoryRunner(ledger, clock)
        runner.prelude()
        for s in steps:
            runner.run(s)
        ledger.read_models.catch_up()
        incremental = tables(ledger)
        assert aggregate_views_match(ledger) == []
        assert audit_replay_differs(ledger) == []
        ledger.read_models.rebuild()
        rebuilt = tables(ledger)
        assert canonical(incremental) == canonical(rebuilt)
        assert ledger.read_models.position() == ledger.max_position()


def audit_replay_differs(ledger: Ledger) -> list[str]:
    """What the audit's replay holds differently from the aggregate, per subject."""
    checker = HistoryChecker(ledger.policy)
    for n in ledger.notifications(1):
        checker.add(
            n.id, str(n.originator_id), n.originator_version, n.topic, orjson.loads(n.state)
        )
    wrong = []
    for subject_id in ledger.subject_ids():
        aggregate = ledger.app.load_subject(subject_id)
        replayed = checker.subjects[subject_id]
        consents = {p: (c["active"], sorted(c["channels"])) for p, c in replayed.consents.items()}
        expected = {p: (c["active"], c["channels"]) for p, c in aggregate.consents.items()}
        anchors = (
            "registered_at",
            "relationship_ended_at",
            "last_dialogue_at",
            "marketing_registered_at",
        )
        checks = {
            "consents": (consents, expected),
            "objections": (set(replayed.objections), set(aggregate.objections)),
            "competitions": (replayed.competitions, aggregate.competitions),
            "relationship": (
                replayed.has_active_relationship(),
                aggregate.has_active_relationship(),
            ),
            **{a: (getattr(replayed, a), getattr(aggregate, a)) for a in anchors},
            "deadlines": (
                {x: checker.deadline(replayed, x) for x in aggregate.scopes},
                {x: scope_deadline(aggregate, ledger.policy, x) for x in aggregate.scopes},
            ),
        }
        wrong += [f"{subject_id} {k}: {a!r} != {b!r}" for k, (a, b) in checks.items() if a != b]
    return wrong


def _test(backend: str) -> Any:
    @settings(
        max_examples=EXAMPLES[backend],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(steps=st.lists(step, min_size=5, max_size=50))
    def check(steps: list[tuple[Any, ...]]) -> None:
        _check(backend, steps)

    return check


def test_incremental_equals_rebuild(backend: str) -> None:
    _test(backend)()
