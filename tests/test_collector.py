"""The cycle collector waits while a batch or a rebuild runs, and is on again afterwards.

Observed from inside the work: the ledger's clock (read by every command) and a
rebuild's progress callback (called after every batch) note whether the collector is on.
"""

from __future__ import annotations

import gc
import sys
import threading
import uuid
from datetime import datetime
from typing import Any

import pytest

from ledger.clock import FixedClock
from ledger.collector import collector_paused
from ledger.config import Settings
from ledger.facade import Ledger


class WatchingClock(FixedClock):
    """A fixed clock that notes, at each reading, whether the collector is on."""

    def __init__(self, moment: datetime) -> None:
        super().__init__(moment)
        self.collector_on: list[bool] = []

    def now(self) -> datetime:
        self.collector_on.append(gc.isenabled())
        return super().now()


def onboarding(count: int) -> list[dict[str, Any]]:
    commands: list[dict[str, Any]] = []
    for i in range(count):
        subject = str(uuid.uuid4())
        commands += [
            {
                "type": "register_subject",
                "subject": subject,
                "kind": "customer",
                "purpose": "customer_administration",
                "legal_basis": "contract",
                "identifiers": {"email": f"kunde{i}@example.dk"},
            },
            {
                "type": "collect",
                "subject": subject,
                "category": "name",
                "value": f"Kunde {i}",
                "purpose": "customer_administration",
                "legal_basis": "contract",
                "source": "subject",
            },
        ]
    return commands


def test_commands_run_with_the_collector_paused(settings: Settings, clock: FixedClock) -> None:
    watching = WatchingClock(clock.now())
    with Ledger.open(settings, clock=watching) as ledger:
        assert gc.isenabled()
        results = ledger.execute_many(onboarding(50))
        assert all(r["ok"] for r in results)
        assert ledger.execute(onboarding(1)[0])["ok"]
        assert watching.collector_on and not any(watching.collector_on)
        assert gc.isenabled()


def test_the_collector_is_back_after_a_rejection_and_an_error(ledger: Ledger) -> None:
    rejected = ledger.execute_many([{"type": "collect", "subject": str(uuid.uuid4())}])
    assert rejected[0]["ok"] is False
    assert gc.isenabled()
    with pytest.raises(TypeError):
        ledger.app.execute_many(None)  # type: ignore[arg-type]
    assert gc.isenabled()


def test_a_rebuild_runs_with_the_collector_paused(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Throughout: dropping the tables, every batch, and creating the indexes."""
    ledger.execute_many(onboarding(50))
    recorder = ledger.read_models.recorder
    seen: dict[str, list[bool]] = {"reset": [], "batch": [], "indexes": []}

    def watching(step: str, method: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            seen[step].append(gc.isenabled())
            return method(*args, **kwargs)

        return run

    monkeypatch.setattr(recorder, "reset", watching("reset", recorder.reset))
    monkeypatch.setattr(recorder, "create_indexes", watching("indexes", recorder.create_indexes))
    assert ledger.read_models.rebuild(
        progress=lambda done, total: seen["batch"].append(gc.isenabled())
    )
    assert all(seen.values()), seen  # each step was observed
    assert not any(on for steps in seen.values() for on in steps)
    assert gc.isenabled()


def test_overlapping_pauses_in_two_threads_leave_the_collector_on() -> None:
    """Many short pauses in two threads, switching threads as often as Python allows:
    whatever the interleaving, the collector is on once both are done."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(5):

            def pause_often() -> None:
                for _ in range(5_000):
                    with collector_paused():
                        pass

            threads = [threading.Thread(target=pause_often) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert gc.isenabled()
    finally:
        sys.setswitchinterval(switch)


def test_a_pause_leaves_the_collector_off_if_it_was_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
