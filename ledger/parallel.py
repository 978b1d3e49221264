"""A second process for large atomic batches: half of the commands run on the other core.

Python runs one thread at a time, and a batch of 1,000 commands spends most of its time in
this process's CPU (the rules, sealing, encoding the events) while the database waits.
The commands of one batch that name different subjects are independent: a command reads
and changes only its own subject, that subject's keys and its index rows. So a batch is
split by subject (`split_by_subject`: every command on one subject stays in one share, in
its order), and a second process, which opens the same ledger, parses and runs one share
while this process parses and runs the other. The second process writes nothing: it
sends back its results,
its events already in stored form, its new keys (wrapped; never a key itself), its index
rows, the keys it shreds and its snapshots (`Share`), and this process writes both
shares as one unit of work in one transaction, as if it had run them all. Every 100
commands, the second process sends the events of the subjects it is done with ahead of
its share (as far as they fit in the pipe, which is enlarged to 1 MiB), and the writer
inserts them meanwhile. On PostgreSQL the writer opens the transaction (and its COPY)
first and sends its own finished subjects' events too while it runs its share, so the
server inserts both shares' events while they are made (`writing_rows` of the
recorders).

A rejected command fails the batch as it would in one process: a command that does not
parse comes first (the earliest of them), else the earliest command of either share
that the rules reject. Only atomic batches of at least `PARALLEL_FROM` commands with no
idempotency keys are split (a receipt is looked up across the whole batch); a group
commit (`atomic=False`) runs in one process. The second process is started by the first
such batch, which runs in one process meanwhile (starting takes about a second: it
imports the ledger and opens the stores), and lives as long as the `Ledger`; batches are
split once it is ready. If it dies during a batch, the batch is retried with a new one;
if it cannot open the ledger, batches run in one process and another start is tried a
minute later. An exception it meets during a share is raised in the writing process (a
key conflict is retried there like any race). `LEDGER_BATCH_PROCESSES=1` turns it off.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from eventsourcing.persistence import StoredEvent

from ledger.commands import uuid
from ledger.crypto.keystore import KeyRow
from ledger.errors import LedgerError
from ledger.eventrows import EventRow
from ledger.logs import get_logger

if TYPE_CHECKING:
    from ledger.config import Settings
    from ledger.domain.policy import PolicyCatalogue

log = get_logger("ledger.parallel")

PARALLEL_FROM = 200  # commands in an atomic batch from which a second process takes a share
RESTART_AFTER_FAILURE = 60.0  # seconds before another start, after one failed to open
SECOND_SHARE = 0.5  # of a split batch's commands (0.4 and 0.6 measured no better)
REPLY_PIPE_BYTES = 1 << 20  # Linux's largest pipe for anyone: events sent ahead wait there
PIPE_BUF_LEAST = 512  # bytes any POSIX pipe holds

Indexed = tuple[int, Any]  # a command as sent (not yet parsed) and its place in the batch
Brief = tuple[int, str, str | None, str | None]  # a parsed command's place, type, subject, actor


class HelperLost(Exception):
    """The second process died during a batch: run the batch again (a new one starts)."""


@dataclass
class Share:
    """What the process that writes a batch needs of another process's share of it."""

    results: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)  # pickled far faster than StoredEvents
    keys: list[KeyRow] = field(default_factory=list)
    lookups: list[tuple[str, str, bytes]] = field(default_factory=list)
    registered_now: set[str] = field(default_factory=set)
    shreds: list[tuple[str, str, list[str]]] = field(default_factory=list)
    snapshots: list[StoredEvent] = field(default_factory=list)
    # what the log needs of each command (the share was parsed there)
    briefs: list[Brief] = field(default_factory=list)
    # the first rejected command: its place in the batch, code and message (a
    # `LedgerError` itself does not survive pickling), and whether it did not parse
    rejected: tuple[int, str, str] | None = None
    unparsable: bool = False

    @classmethod
    def refused(
        cls, index: int, error: LedgerError, *, unparsable: bool = False, briefs: list[Brief]
    ) -> Share:
        rejected = (index, error.code, error.message)
        return cls(rejected=rejected, unparsable=unparsable, briefs=briefs)

    def error(self) -> LedgerError:
        assert self.rejected is not None
        return LedgerError(self.rejected[1], self.rejected[2])


def split_by_subject(
    commands: Sequence[Indexed], second_share: float = SECOND_SHARE
) -> tuple[list[Indexed], list[Indexed]]:
    """Two shares of commands as sent, the second about `second_share` of them, every
    subject's commands in one of them, in order.

    A subject is taken in its canonical form (as parsing gives it), so that two spellings
    of one UUID stay together. A command without a valid subject (a registration whose id
    the ledger chooses, or one that will not parse) stands alone.
    """
    groups: dict[str | int, list[Indexed]] = {}
    for index, command in commands:
        groups.setdefault(_subject_of(command) or index, []).append((index, command))
    first: list[Indexed] = []
    second: list[Indexed] = []
    for group in groups.values():
        placed = len(first) + len(second)
        (second if len(second) < second_share * placed else first).extend(group)
    first.sort(key=lambda item: item[0])
    second.sort(key=lambda item: item[0])
    return first, second


def _subject_of(command: Any) -> str | None:
    """The canonical subject a command as sent names, if it names a valid one."""
    subject = command.get("subject") if isinstance(command, dict) else None
    if subject is None:
        return None
    try:
        return uuid("subject", subject)
    except LedgerError:
        return None


class SecondProcess:
    """The other process of a split batch (see the module's docstring).

    `python -m ledger.parallel`, spoken to over its standard input and output: one pickled
    message each way per batch, length first. Not `multiprocessing`: its way of starting
    a clean process runs the parent's main script again in the child, which a script that
    uses the ledger without an `if __name__ == "__main__"` guard would not survive.
    """

    def __init__(self, settings: Settings, policy: PolicyCatalogue) -> None:
        self._settings = settings
        self._policy = policy
        self._child: subprocess.Popen[bytes] | None = None
        self._ready = False  # the child said it has the ledger open
        self._sent = 0  # shares sent: a reply names its share, and a stale one is dropped
        self._held: tuple[str, Any] | None = None  # a reply read early (`rows_ready`)
        self._next_start = 0.0  # after a child failed to open the ledger: not before then
        # Batches come from any thread (an HTTP server's pool): one of them at a time
        # starts the process or reads its word that it is ready. (Shares themselves are
        # sent and received under the application's write lock.)
        self._starting = threading.Lock()

    @property
    def shares_sent(self) -> int:
        """How many shares of batches this process has handed to a second process."""
        return self._sent

    def takes(self, commands: Sequence[Any]) -> bool:
        """Whether this batch (as sent) is split: large, all objects, no idempotency keys,
        and the second process ready. The first such batch starts it and runs in this
        process: the second process takes about a second to import the ledger and open
        its stores, which a batch should not wait for (a script that sends one large
        batch would be slower for it)."""
        return (
            len(commands) >= PARALLEL_FROM
            and all(isinstance(c, dict) and c.get("idempotency_key") is None for c in commands)
            and self._ready_now()
        )

    def warm_up(self) -> None:
        """Start the second process if it is not running, and wait until it is ready;
        raises what it met opening the ledger."""
        self._ensure(wait=True)

    def submit(self, commands: Sequence[Indexed], now: datetime, actor: str | None) -> None:
        """Hand the second process its share, as sent (it parses them, for `actor` where
        a command names none); `result` waits for what it made of it. (A batch retried
        because the process died waits here for a new one.)"""
        self._ensure(wait=True)
        assert self._child is not None
        self._sent += 1
        self._held = None
        try:
            _send(self._child.stdin, (self._sent, list(commands), now, actor))
        except OSError:
            self._discard()
            raise HelperLost("the second process has died") from None

    def receive(self) -> Share | list[EventRow]:
        """The next reply to the share sent last: the events of its subjects that are
        finished, sent ahead while it runs the rest (any number of these), then the share
        itself. Replies to an earlier share, which its batch stopped waiting for, are
        passed over."""
        if self._held is not None:
            outcome, value = self._held
            self._held = None
        else:
            outcome, value = self._next_reply()
        if outcome == "error":
            raise value
        assert isinstance(value, Share | list)
        return value

    def rows_ready(self) -> list[list[EventRow]]:
        """The events sent ahead that are here already, without waiting; a reply of
        another kind (the share itself) is kept for `receive`."""
        assert self._child is not None and self._child.stdout is not None
        ready: list[list[EventRow]] = []
        while self._held is None and select.select([self._child.stdout], [], [], 0)[0]:
            outcome, value = self._next_reply()
            if outcome == "rows":
                ready.append(value)
            else:
                self._held = (outcome, value)
        return ready

    def _next_reply(self) -> tuple[str, Any]:
        assert self._child is not None
        try:
            number, outcome, value = _receive(self._child.stdout)
            while number != self._sent:
                number, outcome, value = _receive(self._child.stdout)
        except (OSError, EOFError):
            self._discard()
            raise HelperLost("the second process died during the batch") from None
        return outcome, value

    def result(self) -> Share:
        """The share sent last, passing over the events it sent ahead (for a batch that
        will not be written)."""
        while not isinstance(reply := self.receive(), Share):
            pass
        return reply

    def _ready_now(self) -> bool:
        """Whether the second process is ready, without waiting: started if need be."""
        try:
            return self._ensure(wait=False)
        except Exception as exc:  # the batch runs here; the next start waits a while
            log.warning("second_process_unavailable", error=type(exc).__name__)
            return False

    def _ensure(self, *, wait: bool) -> bool:
        """Start the second process if none is running; whether it is ready (with `wait`,
        once it is). Raises what it met opening the ledger (a rotated master key), and
        HelperLost if it ended before it was ready."""
        with self._starting:
            return self._ensure_started(wait=wait)

    def _ensure_started(self, *, wait: bool) -> bool:
        if self._child is not None and self._child.poll() is not None:
            self._discard()  # it died between batches
        if self._child is None:
            if not wait and time.monotonic() < self._next_start:
                return False
            self._child = self._start()
        if self._ready:
            return True
        replies = self._child.stdout
        assert replies is not None
        if not wait and not select.select([replies], [], [], 0)[0]:
            return False  # still starting
        try:
            outcome, error = _receive(replies)
        except (OSError, EOFError):
            outcome, error = "error", HelperLost("the second process did not start")
        if outcome == "error":
            self._discard()
            self._next_start = time.monotonic() + RESTART_AFTER_FAILURE
            raise error
        self._ready = True
        return True

    def _start(self) -> subprocess.Popen[bytes]:
        """The second process, opening the ledger: it says when it is ready."""
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        child = subprocess.Popen(
            # -P: not the working directory first on the path (`-m` would put it there),
            # where another checkout's `ledger` could shadow this one
            [sys.executable, "-P", "-m", "ledger.parallel"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._ready = False
        assert child.stdout is not None
        with contextlib.suppress(ImportError, AttributeError, OSError):  # not Linux: smaller
            import fcntl

            fcntl.fcntl(child.stdout.fileno(), fcntl.F_SETPIPE_SZ, REPLY_PIPE_BYTES)
        with contextlib.suppress(OSError):  # it has gone already: `_ensure` reads its end
            _send(child.stdin, (self._settings, self._policy))
        return child

    def _discard(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            self._child = None
            self._ready = False

    def close(self) -> None:
        """End the second process: it exits when its input closes (one still starting
        is stopped: nothing of it is needed, and it would first finish opening)."""
        with self._starting:
            self._close()

    def _close(self) -> None:
        if self._child is None:
            return
        if not self._ready:
            self._discard()
            return
        assert self._child.stdin is not None
        try:
            self._child.stdin.close()
            self._child.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._child.kill()
            self._child.wait()
        self._child = None
        self._ready = False


def _send(stream: IO[bytes] | None, message: object) -> None:
    _write(stream, _framed(message))


def _framed(message: object) -> bytes:
    """A message as sent: its length, then its pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(8, "big") + data


def _write(stream: IO[bytes] | None, framed: bytes) -> None:
    assert stream is not None
    stream.write(framed)
    stream.flush()


def _receive(stream: IO[bytes] | None) -> Any:
    assert stream is not None
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the other process has gone")
    size = int.from_bytes(head, "big")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other process has gone")
    return pickle.loads(data)


# -- in the second process -----------------------------------------------------------


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Open the ledger, then run each share sent until the input closes."""
    from ledger.facade import Ledger  # the facade makes this module's `SecondProcess`

    settings, policy = _receive(requests)
    try:
        ledger = Ledger.open(settings, policy=policy, batch_processes=1)
    except Exception as exc:
        _send(replies, ("error", _portable(exc)))
        return
    # What is here now (modules, the policy, the open stores) lives as long as this
    # process: moved out of the cycle collector's sight, a full collection walks only
    # what the shares make (23 ms each, twice in 40 batches, on a share's way in; now 1).
    gc.freeze()
    budget = _pipe_size(replies) // 2
    with ledger:
        # Opening may create or check tables, which waits for a writer's table lock: the
        # batch's writer must not hold one while this process opens, so it waits for this.
        _send(replies, ("ready", None))
        while True:
            try:
                number, commands, now, actor = _receive(requests)
            except EOFError:
                return
            ahead = _RowsSender(replies, number, budget)
            try:
                reply: tuple[int, str, object] = (
                    number,
                    "share",
                    ledger.app.prepare_share(commands, now, actor, ahead.send),
                )
            except Exception as exc:  # the writing process raises it (a retry, or a failure)
                reply = (number, "error", _portable(exc))
            _send(replies, reply)


class _RowsSender:
    """Sends a share's events ahead of the share (`prepare_share`), as long as they fit
    in the pipe with room to spare: the writing process may read them only once its own
    share is made, and this process must not wait for that."""

    def __init__(self, replies: IO[bytes], number: int, budget: int) -> None:
        self._replies = replies
        self._number = number
        self._left = budget

    def send(self, rows: list[EventRow]) -> bool:
        """Send these rows if they fit; whether they were sent."""
        framed = _framed((self._number, "rows", rows))
        if len(framed) > self._left:
            self._left = 0
            return False
        self._left -= len(framed)
        _write(self._replies, framed)
        return True


def _pipe_size(stream: IO[bytes]) -> int:
    """How many bytes the pipe holds unread (Linux says; elsewhere, POSIX's least)."""
    try:
        import fcntl

        return int(fcntl.fcntl(stream.fileno(), fcntl.F_GETPIPE_SZ))
    except (ImportError, AttributeError, OSError):
        return PIPE_BUF_LEAST


def _portable(exc: Exception) -> Exception:
    """The exception, if it survives pickling (the writer raises it as it is: a key
    conflict is retried there), else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


if __name__ == "__main__":
    # Replies get standard output to themselves: anything else written there (a print, a
    # library's warning) goes to standard error instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)
