"""Background work of a server process: keep read models and the audit log current, sweep.

Runs on its own thread with its own `Ledger` (its own connections), so a slow sweep or
sealing never holds up the writer thread. Several server processes on one PostgreSQL
database may all run it: the sweeper's writes are optimistic (a scope already shredded by
another process is no longer due when the subject is reloaded), so none is shredded twice.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from typing import Any

from ledger.facade import Ledger
from ledger.logs import get_logger

log = get_logger("ledger.http")


def after_write_hook() -> Callable[[Ledger], None] | None:
    """The CLI's after-write work (projections catch-up, sealing), if the project has it."""
    try:
        module = importlib.import_module("ledger.cli.common")
    except ImportError:  # pragma: no cover - the CLI is part of the package
        return None
    hook = getattr(module, "after_write", None)
    return hook if callable(hook) else None


class BackgroundWorker:
    """Every `tick` seconds: the after-write hook; every `sweep_every` seconds: a sweep."""

    def __init__(
        self,
        open_ledger: Callable[[], Ledger],
        *,
        tick: float = 1.0,
        sweep_every: float | None = 3600.0,
    ) -> None:
        self._open = open_ledger
        self.tick = tick
        self.sweep_every = sweep_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-background", daemon=True)
        self.ticks = 0
        self.sweeps = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            ledger = self._open()
        except Exception as exc:
            log.error("background_failed", error=type(exc).__name__)
            self.last_error = type(exc).__name__
            return
        hook = after_write_hook()
        next_sweep = time.monotonic() + (self.sweep_every or 0)
        try:
            while not self._stop.wait(self.tick):
                if hook is not None:
                    self._guard("after_write", hook, ledger)
                self.ticks += 1
                if self.sweep_every is not None and time.monotonic() >= next_sweep:
                    self._guard("sweep", self._sweep, ledger)
                    next_sweep = time.monotonic() + self.sweep_every
        finally:
            ledger.close()

    def _sweep(self, ledger: Ledger) -> None:
        report = ledger.sweep()
        self.sweeps += 1
        if report["shredded"]:
            log.info("background_sweep", scopes=len(report["shredded"]))

    def _guard(self, what: str, action: Callable[[Ledger], Any], ledger: Ledger) -> None:
        """One failing round is logged and retried next time; it never stops the server."""
        try:
            action(ledger)
        except Exception as exc:
            self.last_error = f"{what}: {type(exc).__name__}"
            log.error("background_failed", task=what, error=type(exc).__name__)
