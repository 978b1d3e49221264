"""Group commit: concurrent single commands saved together in one transaction.

The event store and the key store are synchronous, so every write of a server process runs
on one dedicated thread. HTTP handlers hand it commands and await futures. The thread takes
whatever has queued up (at most `max_batch`), waits a few milliseconds more only while other
requests are known to be on their way, and executes the group with
`LedgerApplication.execute_many(atomic=False)`: each command stands alone, a rejected one is
left out, the rest are written in one transaction. A database failure fails the whole group
and nothing of it is written; every caller in it gets the error.

Work that must not share a transaction (an atomic batch, a reveal that records
`DataViewed`) is queued as a job and runs alone between groups, in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ledger.api.errors import DATABASE_ERRORS
from ledger.facade import Ledger
from ledger.logs import get_logger

log = get_logger("ledger.http")


@dataclass
class _Command:
    """A command and the event loop future its request awaits."""

    command: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[dict[str, Any]]


@dataclass
class _Job:
    action: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


class ExecutorStopped(RuntimeError):
    """The server is shutting down and takes no more work."""


class GroupCommitExecutor:
    """One writer thread per process; `group_commit=False` writes each command alone."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        group_commit: bool = True,
        max_batch: int = 256,
        max_wait: float = 0.002,
    ) -> None:
        self.ledger = ledger
        self.group_commit = group_commit
        self.max_batch = max(1, max_batch) if group_commit else 1
        self.max_wait = max_wait if group_commit else 0.0
        self._queue: deque[_Command | _Job] = deque()
        self._cond = threading.Condition()
        self._arriving = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self.groups = 0
        self.commands = 0

    # -- the event loop's side ----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def arriving(self, delta: int) -> None:
        """Count requests whose command is still being read, so a group may wait for them.

        A request that arrived but will not submit (a bad body, a batch) counts itself out
        with -1; a gathering group then stops waiting for it at once.
        """
        with self._cond:
            self._arriving += delta
            if delta < 0:
                self._cond.notify()

    def submit(self, command: Any, *, arrived: bool = False) -> asyncio.Future[dict[str, Any]]:
        """Queue one command for the next group; the future holds its own result.

        Called on the event loop, whose future it returns: a group's results reach the
        loop in one wake-up, not one per command. `arrived`: the request was counted by
        `arriving(1)`; it is counted out in the same step, so the writer never waits for a
        command that is already queued.
        """
        loop = asyncio.get_running_loop()
        item = _Command(command, loop, loop.create_future())
        self._put(item, -1 if arrived else 0)
        return item.future

    def submit_job(self, action: Callable[[], Any]) -> Future[Any]:
        """Queue work that runs alone on the writer thread (its own transaction)."""
        item = _Job(action)
        self._put(item, 0)
        return item.future

    def _put(self, item: _Command | _Job, arrived: int) -> None:
        with self._cond:
            self._arriving += arrived
            if self._stopping:
                raise ExecutorStopped("the server is shutting down")
            self._queue.append(item)
            self._cond.notify()

    def stop(self, timeout: float = 30.0) -> None:
        """Take no more work, finish every queued group and job, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                first = self._queue.popleft()
                if isinstance(first, _Job):
                    work: _Job | list[_Command] = first
                else:
                    work = self._gather(first)
            if isinstance(work, _Job):
                self._run_job(work)
            else:
                self._run_group(work)

    def _gather(self, first: _Command) -> list[_Command]:
        """Take queued commands up to the next job; wait briefly while more are arriving.

        Called with the condition held. A single client never waits: nothing else is
        on its way.
        """
        group = [first]
        deadline = time.monotonic() + self.max_wait
        while len(group) < self.max_batch:
            if self._queue:
                if isinstance(self._queue[0], _Job):
                    break
                item = self._queue.popleft()
                assert isinstance(item, _Command)
                group.append(item)
                continue
            remaining = deadline - time.monotonic()
            if self._arriving <= 0 or remaining <= 0 or self._stopping:
                break
            self._cond.wait(remaining)
        return group

    def _run_group(self, group: list[_Command]) -> None:
        live = [item for item in group if not item.future.cancelled()]
        if not live:
            return
        if not self.group_commit:  # one transaction per command
            _deliver([(item, self._alone(item)) for item in live])
            return
        started = time.perf_counter()
        try:
            results = self.ledger.app.execute_many([item.command for item in live], atomic=False)
        except Exception as exc:  # nothing of this group was written
            log.error(
                "group_failed",
                commands=len(live),
                error=type(exc).__name__,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            if len(live) > 1 and not isinstance(exc, DATABASE_ERRORS):
                # Not the database: most likely one command the code could not handle.
                # Each runs alone, so that one fails alone and its neighbours are written.
                _deliver([(item, self._alone(item)) for item in live])
            else:
                _deliver([(item, exc) for item in live])
            return
        self.groups += 1
        self.commands += len(live)
        _deliver(list(zip(live, results, strict=True)))

    def _alone(self, item: _Command) -> dict[str, Any] | Exception:
        """One command in a transaction of its own; its failure is its result."""
        try:
            result = self.ledger.execute(item.command)
        except Exception as exc:
            log.error("command_failed", error=type(exc).__name__)
            return exc
        self.groups += 1
        self.commands += 1
        return result

    def _run_job(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            result = job.action()
        except BaseException as exc:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)


Outcome = tuple[_Command, dict[str, Any] | BaseException]


def _deliver(outcomes: list[Outcome]) -> None:
    """Hand results to the waiting requests: one `call_soon_threadsafe` per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_settle, settled)


def _settle(outcomes: list[Outcome]) -> None:
    """On the event loop: set each future that its request still awaits."""
    for item, result in outcomes:
        if item.future.done():
            continue
        if isinstance(result, BaseException):
            item.future.set_exception(result)
        else:
            item.future.set_result(result)
