"""Property: read models kept incrementally (in batches of any size, at any moments) equal a
fresh rebuild from the first event, and `subject show` from them equals the aggregate's
view, for random command sequences, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.clock import FixedClock
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
        ledger.read_models.rebuild()
        rebuilt = tables(ledger)
        assert canonical(incremental) == canonical(rebuilt)
        assert ledger.read_models.position() == ledger.max_position()


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
