"""Background work beside the HTTP service: keep read models and the audit log current, sweep.

`ledger serve` runs it in a process of its own (one per `serve`, whatever `--workers`
says), so its CPU-heavy rounds never hold the GIL of a process that answers requests.
`create_app` with `ServerOptions.tick > 0` runs it on a thread instead (tests, embedding).
Either way it has its own `Ledger` (its own connections).

Several server processes on one PostgreSQL database may all sweep: the sweeper's writes
are optimistic (a scope already shredded by another process is no longer due when the
subject is reloaded), so none is shredded twice.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from ledger.api.opening import open_ledger
from ledger.config import Settings
from ledger.facade import Ledger
from ledger.logs import configure_logging, get_logger

log = get_logger("ledger.http")


class StopFlag(Protocol):
    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


def after_write_hook() -> Callable[[Ledger], None] | None:
    """The CLI's after-write work (projections catch-up, sealing), if the project has it."""
    try:
        module = importlib.import_module("ledger.cli.common")
    except ImportError:  # pragma: no cover - the CLI is part of the package
        return None
    hook = getattr(module, "after_write", None)
    return hook if callable(hook) else None


class BackgroundWorker:
    """Every `tick` seconds: the after-write hook; a sweep in the first round and then every
    `sweep_every` seconds."""

    def __init__(
        self,
        open_ledger: Callable[[], Ledger],
        *,
        tick: float = 1.0,
        sweep_every: float | None = 3600.0,
        stop: StopFlag | None = None,
    ) -> None:
        self._open = open_ledger
        self.tick = tick
        self.sweep_every = sweep_every
        self._stop: StopFlag = stop if stop is not None else threading.Event()
        self._thread = threading.Thread(target=self.run, name="ledger-background", daemon=True)
        self.ticks = 0
        self.sweeps = 0
        self.last_error: str | None = None

    def start(self) -> None:
        """Run on a thread of this process."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def run(self, alive: Callable[[], bool] = lambda: True) -> None:
        """The loop, until stopped (or `alive()` turns false); one failing round never ends it."""
        try:
            ledger = self._open()
        except Exception as exc:
            log.error("background_failed", error=type(exc).__name__)
            self.last_error = type(exc).__name__
            return
        hook = after_write_hook()
        next_sweep = time.monotonic()  # sweep in the first round: restarts must not starve it
        try:
            while not self._stop.wait(self.tick) and alive():
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
        try:
            action(ledger)
        except Exception as exc:
            self.last_error = f"{what}: {type(exc).__name__}"
            log.error("background_failed", task=what, error=type(exc).__name__)


def _process_main(tick: float, sweep_every: float | None, stop: StopFlag, parent: int) -> None:
    """The background process: settings from the (inherited) environment."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches `serve`, which stops us
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    configure_logging(Settings.from_env().log_path)
    worker = BackgroundWorker(open_ledger, tick=tick, sweep_every=sweep_every, stop=stop)
    log.info("background_started", pid=os.getpid(), sweep_every=sweep_every)
    worker.run(alive=lambda: os.getppid() == parent)


class BackgroundProcess:
    """The background worker in a child process; ends when told, or when its parent dies."""

    def __init__(self, *, tick: float = 1.0, sweep_every: float | None = 3600.0) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._process: BaseProcess = context.Process(
            target=_process_main,
            args=(tick, sweep_every, self._stop, os.getpid()),
            name="ledger-background",
        )

    def start(self) -> None:
        self._process.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
