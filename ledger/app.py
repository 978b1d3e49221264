"""LedgerApplication: executes commands against DataSubject aggregates (DESIGN 3).

A command travels: parse (`commands`) → load aggregates → its handler (`handlers`) calls
the aggregate, which checks the rules and, through the sealer, encrypts personal values
with the subject's scope keys → one transaction saves every event of the unit of work
(`unit_of_work`), with any idempotency receipts (`receipts`) → keys of shredded scopes
are destroyed and index rows written (after the events are safe, DESIGN 4.3).
"""

from __future__ import annotations

import copy
import functools
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import (
    EventStore,
    IntegrityError,
    Recording,
    StoredEvent,
    Transcoder,
)
from eventsourcing.utils import EnvType

from ledger.clock import Clock, SystemClock
from ledger.collector import collector_paused
from ledger.commands import Command, parse_command
from ledger.crypto.keystore import KeyConflict, KeyRow, KeyStore
from ledger.domain.policy import PolicyCatalogue
from ledger.domain.subject import DataSubject
from ledger.errors import LedgerError, unknown_subject
from ledger.eventrows import EventRow, RowSink, event_row
from ledger.eventstore import EventStoreQueries
from ledger.handlers import CommandHandlers
from ledger.logs import get_logger
from ledger.parallel import HelperLost, SecondProcess, Share, split_by_subject
from ledger.persistence import LedgerEventStore, OrjsonTranscoder
from ledger.pgrecorder import CopyingPostgresRecorder, TransactionPart
from ledger.policies import load_policy
from ledger.receipts import RECEIPTS_HONOURED, CommandReceipt, payload_hash, receipt_period
from ledger.unit_of_work import ScopeSealer, UnitOfWork
from ledger.walcopy import WAL_COPY_FROM, WalCopier

log = get_logger("ledger.app")

CLOCK_SKEW = timedelta(minutes=1)
MAX_ATTEMPTS = 30  # a writer racing a busy one on the same subject may lose many times
BATCH_LOG_THRESHOLD = 20
ROWS_AHEAD_EVERY = 100  # commands of a second process's share between rows sent ahead


def project(aggregate: Any, events: Iterable[Any]) -> Any:
    """The library's `project_aggregate` without its per-event runtime Protocol assertion.

    Every event this application stores is an `Aggregate.Event`; on Python 3.11 an
    `isinstance` against a runtime-checkable Protocol costs ~25 µs, a tenth of a command.
    """
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


class LedgerApplication(Application[UUID]):
    """The event-sourced core. Front ends go through `Ledger` (the facade in `ledger`)."""

    name = "Ledger"
    # A snapshot every 50 events keeps loading (and so erasure) cheap for long histories.
    # Snapshots hold the aggregate's state: sealed values only, and outside the Merkle log.
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {DataSubject: 50}
    snapshotting_projectors: ClassVar[dict[type[Any], Any]] = {DataSubject: project}

    def __init__(
        self,
        env: EnvType | None = None,
        *,
        policy: PolicyCatalogue | None = None,
        keystore: KeyStore | None = None,
        clock: Clock | None = None,
        keys_with_events: bool = False,
    ) -> None:
        """`env` alone gives a read-only application (what projection runners construct).

        `keys_with_events`: the key store is in the events' PostgreSQL database, and a unit
        of work's new keys and new subjects' index rows commit in its events' transaction
        (`KeysWithEvents`).
        """
        super().__init__(env=env)
        policy_path = self.env.get("LEDGER_POLICY")
        self.policy = policy or load_policy(Path(policy_path) if policy_path else None)
        self._keystore = keystore
        self.clock: Clock = clock or SystemClock()
        self.queries = EventStoreQueries(self.recorder)
        self.handlers = CommandHandlers(
            self.policy, lambda: self.keystore.lookup_key(), self.load_subject
        )
        # another process that takes half of a large batch (`ledger.parallel`), if any
        self.second_process: SecondProcess | None = None
        # copies SQLite's write-ahead logs back after large writes (`ledger.walcopy`)
        self.wal_copier: WalCopier | None = None
        self._keys_with_events = keys_with_events and isinstance(
            self.recorder, CopyingPostgresRecorder
        )
        # Held while a unit of work changes cached subjects in place, and while a reader
        # copies one out of the cache: a copy is never taken of a half-applied command.
        self._writing = threading.RLock()

    @property
    def keystore(self) -> KeyStore:
        if self._keystore is None:
            raise RuntimeError("this LedgerApplication was opened without a key store (read-only)")
        return self._keystore

    def construct_transcoder(self) -> Transcoder:
        return OrjsonTranscoder()

    def construct_event_store(self) -> EventStore[UUID]:
        """On PostgreSQL, events are mapped as the recorder's COPY sends them (the server
        works meanwhile); SQLite works in this process, where that would only add steps."""
        streaming = isinstance(self.recorder, CopyingPostgresRecorder)
        return LedgerEventStore(mapper=self.mapper, recorder=self.recorder, streaming=streaming)

    def save(self, *objs: Any, recordings: bool = True, **kwargs: Any) -> list[Recording[UUID]]:
        """Save the pending events of these aggregates in one transaction.

        The library's `save` accepts aggregates or events and tells them apart with
        runtime Protocol checks (two per object, ~50 µs on Python 3.11); this application
        only ever saves aggregates, so it collects their events directly. Once saved, an
        aggregate is what the cache holds (see `load_subjects`): callers do not change it
        after saving. `recordings=False` returns none (`LedgerEventStore.write`): the
        commands' unit of work reads none of them.
        """
        processing: ProcessingEvent[UUID] = ProcessingEvent()
        due: list[Any] = []  # to snapshot once saved
        for aggregate in objs:
            events = aggregate.collect_events()
            processing.events.extend(events)
            processing.aggregates[aggregate.id] = aggregate
            if events and self._snapshot_due(aggregate, events[0], events[-1]):
                due.append(aggregate)
        processing.saved_kwargs.update(kwargs)
        if recordings:
            made = self._record(processing)
        else:
            self._write(processing)
            made = []
        if due and self.snapshots is not None:
            snapshots = self.snapshots
            self._keep_snapshots(lambda: snapshots.put([type(a).Snapshot.take(a) for a in due]))
        self._notify(made)
        return made

    def _keep_snapshots(self, write: Callable[[], object]) -> None:
        """Write snapshots after their events: a failure is logged, not raised (the events
        are written, and a snapshot is only a shortcut for reading them)."""
        try:
            write()
        except Exception as exc:
            log.error("snapshots_not_written", error=type(exc).__name__)

    def _cache_saved(self, aggregates: Mapping[UUID, Any]) -> None:
        """Cache aggregates as saved (the library's `_record` does it too)."""
        if self.repository.cache and not self.repository.fastforward:
            for aggregate_id, aggregate in aggregates.items():
                self.repository.cache.put(aggregate_id, aggregate)

    def _write(self, processing_event: ProcessingEvent[UUID]) -> None:
        """The library's `_record` (write the events, cache the aggregates as saved),
        without a `Recording` of each event."""
        events = self.events
        assert isinstance(events, LedgerEventStore)
        events.write(
            processing_event.events,
            tracking=processing_event.tracking,
            **processing_event.saved_kwargs,
        )
        self._cache_saved(processing_event.aggregates)

    def _snapshot_due(self, aggregate: Any, first: Any, last: Any) -> bool:
        """Whether the events saved now (versions `first` to `last`) cross the aggregate's
        snapshotting interval: it is then snapshot as saved, all of a save's snapshots
        together. The library re-reads each such aggregate from the store (two queries
        and a transaction each); looking each saved event's aggregate up by its id, as
        this did before, hashed a UUID in Python per event (1 % of a batch)."""
        interval = self.snapshotting_intervals.get(type(aggregate))
        if not interval:
            return False
        return bool(
            last.originator_version // interval > (first.originator_version - 1) // interval
        )

    # -- execution --------------------------------------------------------------------

    def execute(self, command: Any, *, actor: str | None = None) -> dict[str, Any]:
        return self.execute_many([command], actor=actor)[0]

    def execute_many(
        self, commands: Sequence[Any], *, actor: str | None = None, atomic: bool = True
    ) -> list[dict[str, Any]]:
        """Execute commands in order in one transaction.

        `atomic=True` (a batch): all are written, or none; if one is rejected its result
        carries its error and every other result says it was rolled back because of it.
        `atomic=False` (group commit): each command stands alone; a rejected one is left
        out and the rest are written together in one transaction.
        """
        with collector_paused():  # a full pass over the cached subjects cost ~8 % of a batch
            results = self._execute_many(commands, actor=actor, atomic=atomic)
        if self.wal_copier is not None and len(commands) >= WAL_COPY_FROM:
            self.wal_copier.nudge()
        return results

    def _execute_many(
        self, commands: Sequence[Any], *, actor: str | None, atomic: bool
    ) -> list[dict[str, Any]]:
        started = time.perf_counter()
        helper = self.second_process
        if atomic and helper is not None and helper.takes(commands):
            batch = _SplitBatch(commands, actor)
            return self._retrying(
                len(commands),
                lambda: self._attempt(lambda uow: self._attempt_split(uow, batch), batch.named),
                batch.logged,
                started,
            )
        parsed: list[Command | LedgerError] = []
        for index, data in enumerate(commands):
            try:
                parsed.append(self._parse(data, actor))
            except LedgerError as error:
                if atomic:
                    return self._rolled_back(len(commands), index, error)
                parsed.append(error)
        return self._retrying(
            len(commands),
            lambda: self._attempt(
                lambda uow: self._attempt_in_place(uow, parsed, atomic=atomic),
                lambda: {c.subject for c in parsed if isinstance(c, Command) and c.subject},
            ),
            lambda: parsed,
            started,
        )

    def _retrying(
        self,
        count: int,
        attempt: Callable[[], list[dict[str, Any]]],
        logged: Callable[[], Sequence[Command | LedgerError]],
        started: float,
    ) -> list[dict[str, Any]]:
        """Attempts at a batch's unit of work until one is written or rejected."""
        for n in range(MAX_ATTEMPTS):
            try:
                results = attempt()
            except _Unparsable as unparsable:  # as a parse error before any attempt
                return self._rolled_back(count, unparsable.index, unparsable.error)
            except _Rejected as rejected:
                self._log(logged(), None, rejected, started)
                return self._rolled_back(count, rejected.index, rejected.error)
            except (IntegrityError, KeyConflict, HelperLost):
                # Another writer got there first (same subject version, or the same
                # idempotency key), or the second process died: load fresh state and
                # try again.
                time.sleep(0.001 * min(2**n, 64) * random.uniform(0.5, 1.5))
                continue
            self._log(logged(), results, None, started)
            return results
        conflict = LedgerError("conflict", "concurrent writers kept changing these subjects; retry")
        return self._rolled_back(count, 0, conflict)

    def _parse(self, data: Any, actor: str | None) -> Command:
        command = parse_command(data)
        if actor is not None and command.actor is None:
            command = command._replace(actor=actor)
        return command

    def _rolled_back(self, count: int, index: int, error: LedgerError) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for i in range(count):
            if i == index:
                results.append(error.to_result())
            else:
                results.append(
                    {
                        "ok": False,
                        "rolled_back": True,
                        "error": {
                            "code": error.code,
                            "message": f"not written: command {index + 1} of this "
                            f"transaction was rejected ({error.code})",
                        },
                    }
                )
        return results

    def _attempt(
        self,
        run: Callable[[UnitOfWork], list[dict[str, Any]]],
        named: Callable[[], Iterable[str]],
    ) -> list[dict[str, Any]]:
        """One try at the unit of work: rules and sealing, keys, then events.

        The subjects are the cached instances themselves, changed in place (copying each
        one was a tenth of a command's CPU): if anything fails before they are saved, they
        and the subjects the commands name are dropped from the cache and read again next
        time.
        """
        with self._writing:
            uow = UnitOfWork()
            try:
                return run(uow)
            except BaseException:
                self._forget({*uow.subjects, *named()})
                raise

    def _attempt_in_place(
        self, uow: UnitOfWork, commands: Sequence[Command | LedgerError], *, atomic: bool
    ) -> list[dict[str, Any]]:
        uow.registered = self._registered(commands)
        done, key_rows = self._run_share(
            uow, list(enumerate(commands)), atomic=atomic, now=self.clock.now()
        )
        self._write_unit(uow, key_rows)
        return [result for _, result in done]

    def _registered(self, commands: Iterable[Command | LedgerError]) -> set[str]:
        """Which of the subjects these commands register exist already."""
        return self.existing_subjects(
            [
                c.subject
                for c in commands
                if isinstance(c, Command) and c.type == "register_subject" and c.subject
            ]
        )

    def _attempt_split(self, uow: UnitOfWork, batch: _SplitBatch) -> list[dict[str, Any]]:
        """An atomic batch split with the second process (`ledger.parallel`): each parses
        and runs its share, and this one writes both in one transaction.

        On PostgreSQL the transaction opens first: the server inserts the events of each
        subject done with, of either share, while the rest are made (it would otherwise
        start only once this share is made, with a fifth of the batch's work still to
        do). On SQLite this process does the inserting itself, so it runs its share
        first and holds the write lock only to write."""
        helper = self._helper()
        now = self.clock.now()
        helper.submit(batch.theirs, now, batch.actor)
        mine = batch.parse_mine(self._parse)
        uow.registered = self._registered(command for _, command in mine)
        recorder: Any = self.recorder  # SQLiteEventRecorder or CopyingPostgresRecorder
        inserts_meanwhile = isinstance(recorder, CopyingPostgresRecorder)
        own = None if inserts_meanwhile else self._own_share(uow, batch, mine, now, None)
        with recorder.writing_rows() as sink:
            if own is None:
                own = self._own_share(uow, batch, mine, now, functools.partial(self._pass_on, sink))
            sink.write(own.events)
            other = self._other_share(batch, sink)
            sink.write(other.events)
            if self._keys_with_events:
                sink.add(self._keys_part(own))
                sink.add(self._keys_part(other))
            else:  # in a transaction of their own, committed before the events
                self.keystore.write_keys([*own.keys, *other.keys])
        return self._split_written(uow, batch, [own, other])

    def _own_share(
        self,
        uow: UnitOfWork,
        batch: _SplitBatch,
        mine: list[tuple[int, Command]],
        now: datetime,
        ahead: Callable[[list[EventRow]], bool] | None,
    ) -> Share:
        """Run this process's share of a split batch; `ahead` takes the events of its
        subjects as each is done with (else they all come in the share). A command the
        rules reject is reported unless the other share has an earlier one."""
        try:
            return self._made_share(uow, mine, now, ahead)
        except _Rejected as rejected:  # in this share: is the other's to be named instead?
            other = batch.received(self._helper().result())
            if other.rejected is not None and (
                other.unparsable or other.rejected[0] < rejected.index
            ):
                raise _Rejected.of(other) from None
            raise

    def _made_share(
        self,
        uow: UnitOfWork,
        parsed: list[tuple[int, Command]],
        now: datetime,
        ahead: Callable[[list[EventRow]], bool] | None,
    ) -> Share:
        """Run a parsed share of an atomic batch on the unit of work: what the process
        that writes it needs of it, less the events `ahead` took as each subject was done
        with (`_RowsAhead`). A command the rules reject is raised as `_Rejected`."""
        early = _RowsAhead(self, uow, parsed, ahead) if ahead is not None else None
        done, key_rows = self._run_share(
            uow, parsed, atomic=True, now=now, after=early.after if early else None
        )
        share = self._share_of(uow, done, key_rows)
        if early is not None:
            early.add_to(share)
        return share

    def _other_share(self, batch: _SplitBatch, sink: RowSink) -> Share:
        """The second process's share: its events sent ahead go into `sink` as they come,
        then the share itself (its other events are left to the caller). A rejection
        there rolls back the transaction that `sink` writes to."""
        helper = self._helper()
        while not isinstance(reply := helper.receive(), Share):
            sink.write(reply)
        other = batch.received(reply)
        if other.rejected is not None:
            raise _Rejected.of(other)
        return other

    def _pass_on(self, sink: RowSink, rows: list[EventRow]) -> bool:
        """Events of this process's share sent ahead, and any of the other's that have
        come: into the transaction now."""
        sink.write(rows)
        for other_rows in self._helper().rows_ready():
            sink.write(other_rows)
        return True

    def _helper(self) -> SecondProcess:
        assert self.second_process is not None
        return self.second_process

    def _split_written(
        self, uow: UnitOfWork, batch: _SplitBatch, shares: list[Share]
    ) -> list[dict[str, Any]]:
        """After a split batch's events are written: the cache, snapshots, index rows
        and shredded keys, and the results in the batch's order."""
        self._cache_saved({UUID(subject_id): s for subject_id, s in uow.subjects.items()})
        snapshots = [snapshot for share in shares for snapshot in share.snapshots]
        if snapshots and self.snapshots is not None:
            recorder = self.snapshots.recorder
            self._keep_snapshots(lambda: recorder.insert_events(snapshots))
        lookups = [row for share in shares for row in share.lookups]
        registered_now = {subject for share in shares for subject in share.registered_now}
        self._after_save(
            *self._rows_after_events(lookups, registered_now, sent=self._keys_with_events),
            [s for share in shares for s in share.shreds],
        )
        results: list[dict[str, Any]] = [{}] * batch.count
        for share in shares:
            for index, result in share.results:
                results[index] = result
        return results

    def _keys_part(self, share: Share) -> TransactionPart | None:
        """A share's new keys and its new subjects' index rows, to write with its events
        (PostgreSQL, the key store beside the events), else none."""
        if not self._keys_with_events:
            return None
        return self._with_events(share.keys, share.lookups, share.registered_now)

    def _with_events(
        self,
        key_rows: list[KeyRow],
        lookups: list[tuple[str, str, bytes]],
        registered_now: set[str],
    ) -> TransactionPart | None:
        """The keys and the new subjects' index rows that commit in the events'
        transaction (the key store beside the events on PostgreSQL), if there are any."""
        fresh = [row for row in lookups if row[0] in registered_now]
        alongside = self.keystore.writes_with_events(key_rows, fresh)
        return alongside if alongside else None

    @staticmethod
    def _rows_after_events(
        lookups: list[tuple[str, str, bytes]], registered_now: set[str], *, sent: bool
    ) -> tuple[list[tuple[str, str, bytes]], set[str]]:
        """The index rows written after the events, and which of their subjects are new:
        all of them, unless (`sent`) the new subjects' rows went with the events."""
        if not sent:
            return lookups, registered_now
        return [row for row in lookups if row[0] not in registered_now], set()

    def _run_share(
        self,
        uow: UnitOfWork,
        commands: Sequence[tuple[int, Command | LedgerError]],
        *,
        atomic: bool,
        now: datetime,
        after: Callable[[int], None] | None = None,
    ) -> tuple[list[tuple[int, dict[str, Any]]], list[KeyRow]]:
        """Run these commands (each with its place in the batch) on the unit of work's
        subjects, loaded here: their results, and the new keys their sealing made.
        `after` is told the position (in `commands`) of each command that ran."""
        registering = {
            c.subject
            for _, c in commands
            if isinstance(c, Command) and c.type == "register_subject" and c.subject
        }
        uow.subjects.update(
            self.load_subjects(
                {
                    c.subject
                    for _, c in commands
                    if isinstance(c, Command) and c.subject and c.subject not in registering
                },
                shared=True,
            )
        )
        session = self.keystore.session(
            c.subject for _, c in commands if isinstance(c, Command) and c.subject
        )
        sealer = ScopeSealer(session, uow)
        results: list[tuple[int, dict[str, Any]]] = []
        try:
            for position, (index, command) in enumerate(commands):
                if isinstance(command, LedgerError):
                    results.append((index, command.to_result()))
                    continue
                saved = None if atomic else uow.checkpoint(command.subject)
                keys = session.checkpoint()
                try:
                    results.append((index, self._run_one(uow, sealer, command, now)))
                except LedgerError as error:
                    if atomic:
                        raise _Rejected(index, error) from None
                    uow.restore(saved, self._reload)
                    session.rollback_to(keys)
                    results.append((index, error.to_result()))
                if after is not None:
                    after(position)
        finally:
            session.forget()
        return results, session.rows()

    def _write_unit(self, uow: UnitOfWork, key_rows: list[KeyRow]) -> None:
        """Write a unit of work: its keys, events and index rows, then destroy the keys
        it shredded."""
        shreds = uow.shredded_keys()
        registered_now = uow.registered_now()
        lookups = uow.lookup_rows()
        saving = any(s.pending_events for s in uow.subjects.values()) or bool(uow.receipts)
        together = saving and self._keys_with_events
        if together:
            alongside = self._with_events(key_rows, lookups, registered_now)
            extra = {"alongside": alongside} if alongside else {}
            self.save(*uow.subjects.values(), *uow.receipts, recordings=False, **extra)
        else:
            self.keystore.write_keys(key_rows)  # first, in a transaction of their own
            if saving:
                self.save(*uow.subjects.values(), *uow.receipts, recordings=False)
        self._after_save(*self._rows_after_events(lookups, registered_now, sent=together), shreds)

    def prepare_share(
        self,
        commands: Sequence[tuple[int, Any]],
        now: datetime,
        actor: str | None,
        ahead: Callable[[list[EventRow]], bool] | None = None,
    ) -> Share:
        """Parse and run a share of an atomic batch for another process to write
        (`ledger.parallel`): the rules and sealing as in `_attempt_in_place`, the events in
        stored form. Nothing is written here, so the subjects are dropped from the cache
        afterwards (their cached state would run ahead of the store if the batch is not
        written).

        `ahead`, if given, is offered the events of subjects whose commands have all run,
        while the rest of the share runs (`_RowsAhead`); it says whether it took them
        (once it has not, it is offered no more). The share returned holds the events
        it did not take."""
        with collector_paused():
            try:
                parsed = _parse_share(self._parse, commands, actor)
            except _Unparsable as unparsable:
                return Share.refused(unparsable.index, unparsable.error, unparsable=True, briefs=[])
            return self._prepared_share(parsed, now, ahead)

    def _prepared_share(
        self,
        parsed: list[tuple[int, Command]],
        now: datetime,
        ahead: Callable[[list[EventRow]], bool] | None,
    ) -> Share:
        """`prepare_share` once the share has parsed."""
        briefs = [(index, c.type, c.subject, c.actor) for index, c in parsed]
        with self._writing:
            uow = UnitOfWork(registered=self._registered(c for _, c in parsed))
            try:
                share = self._made_share(uow, parsed, now, ahead)
                share.briefs = briefs
                return share
            except _Rejected as rejected:
                return Share.refused(rejected.index, rejected.error, briefs=briefs)
            finally:
                self._forget({*uow.subjects, *(c.subject for _, c in parsed if c.subject)})

    def _share_of(
        self,
        uow: UnitOfWork,
        done: list[tuple[int, dict[str, Any]]],
        key_rows: list[KeyRow],
    ) -> Share:
        """What the process that writes a batch needs of this process's share of it."""
        shreds = uow.shredded_keys()
        registered_now = uow.registered_now()
        events, snapshots = self._stored(uow.subjects.values())
        lookups = uow.lookup_rows()
        return Share(
            results=done,
            events=events,
            keys=key_rows,
            lookups=lookups,
            registered_now=registered_now,
            shreds=shreds,
            snapshots=snapshots,
        )

    def _stored(self, subjects: Iterable[DataSubject]) -> tuple[list[EventRow], list[StoredEvent]]:
        """These subjects' pending events, taken from them as rows to insert, and the
        snapshots due."""
        events: list[EventRow] = []
        snapshots: list[StoredEvent] = []
        for subject in subjects:
            pending = subject.collect_events()
            events.extend(event_row(self.mapper.to_stored_event(e)) for e in pending)
            if pending and self._snapshot_due(subject, pending[0], pending[-1]):
                snapshot = type(subject).Snapshot.take(subject)
                snapshots.append(self.mapper.to_stored_event(snapshot))
        return events, snapshots

    def _after_save(
        self,
        lookups: list[tuple[str, str, bytes]],
        registered_now: set[str],
        shreds: list[tuple[str, str, list[str]]],
    ) -> None:
        """The key store's part after the events are written (on PostgreSQL, new subjects'
        index rows were written with them). The events are the truth and
        are written now: a failure here must not report them as not written (a caller
        would send them again, a group commit would run them again). Each part fails
        safe instead, as after a crash at this point:

        - index rows come after the events, so a row never points at data that was not
          written; without them an identifier is unfindable until `ledger keys reindex`,
          never a wrong match;
        - keys come after their `ScopeShredded` events; the key reconciler destroys any
          key such an event names (it runs after every write, and at each sweep).
        """
        if lookups:
            try:
                self.keystore.replace_lookups(lookups, new_subjects=registered_now)
            except Exception as exc:
                log.error(
                    "lookup_rows_not_written",
                    subjects=len({subject for subject, _, _ in lookups}),
                    error=type(exc).__name__,
                )
        if shreds:
            try:
                self.keystore.shred_many(shreds)
            except Exception as exc:
                log.error("keys_left_to_reconciler", keys=len(shreds), error=type(exc).__name__)

    def _run_one(
        self, uow: UnitOfWork, sealer: ScopeSealer, command: Command, now: datetime
    ) -> dict[str, Any]:
        if command.idempotency_key is not None:
            first = self._receipt(uow, command.idempotency_key)
            if first is not None:
                self._same_command(uow, first, command)
                return dict(first.result)
            period = receipt_period(now)
            receipt_key = self._receipt_key(uow, period, create=True)
            assert receipt_key is not None
            digest = payload_hash(command.raw, receipt_key)
        occurred_at = command.occurred_at or now
        if occurred_at > now + CLOCK_SKEW:
            raise LedgerError("invalid_command", "field 'occurred_at' is in the future")
        extra = self.handlers.handler(command.type)(uow, sealer, command, occurred_at)
        result = {"ok": True, **extra}
        if command.idempotency_key is not None:
            receipt = CommandReceipt.issue(command.idempotency_key, digest, result, period)
            uow.receipts.append(receipt)
        return result

    def _receipt_key(self, uow: UnitOfWork, period: str, *, create: bool) -> bytes | None:
        key = uow.receipt_keys.get(period)
        if key is None:
            key = self.keystore.receipt_key(period, create=create)
            if key is not None:
                uow.receipt_keys[period] = key
        return key

    def _same_command(self, uow: UnitOfWork, first: CommandReceipt, command: Command) -> None:
        """A repeat must be the command the key was first used with (else `duplicate`)."""
        if first.period is None:
            key: bytes | None = self.keystore.lookup_key()
        else:
            key = self._receipt_key(uow, first.period, create=False)
        if key is None:
            raise LedgerError(
                "duplicate",
                "this idempotency key was first used more than "
                f"{RECEIPTS_HONOURED.days} days ago and its command can no longer be compared; "
                "send the command with a new key",
            )
        if first.payload_hash != payload_hash(command.raw, key):
            raise LedgerError(
                "duplicate", "this idempotency key was used before with a different command"
            )

    def _receipt(self, uow: UnitOfWork, key: str) -> CommandReceipt | None:
        receipt_id = CommandReceipt.id_for(key)
        for pending in uow.receipts:
            if pending.id == receipt_id:
                return pending
        try:
            found: Any = self.repository.get(receipt_id, projector_func=project)
        except AggregateNotFoundError:
            return None
        assert isinstance(found, CommandReceipt)
        return found

    # -- loading ----------------------------------------------------------------------

    def load_subject(self, subject_id: str) -> DataSubject:
        found = self.load_subjects([subject_id]).get(subject_id)
        if found is None:
            raise unknown_subject(subject_id)
        return found

    def load_subjects(
        self, subject_ids: Iterable[str], *, shared: bool = False
    ) -> dict[str, DataSubject]:
        """Current copies of these subjects (the unknown left out), one query for all.

        The cache holds each subject as this process last saved it; one query brings every
        cached subject up to date with events other processes wrote since (the library
        would ask once per subject). Subjects not cached are read in full. A subject
        changed again after this read is caught when saving (optimistic concurrency), and
        the retry reads again.

        `shared=True` hands out the cached instances themselves, brought up to date in
        place: for the unit of work only, which holds `_writing` and evicts what it fails
        to save. Other callers get copies, taken under that lock; a reader holds it across
        a database read only for a subject that is not cached.
        """
        cache: Any = self.repository.cache
        wanted: dict[UUID, str] = {}
        for subject_id in subject_ids:
            try:
                wanted[UUID(subject_id)] = subject_id
            except ValueError:
                continue
        cached: dict[UUID, Any] = {}
        if cache is not None:
            with self._writing:
                for uid in wanted:
                    try:
                        found_in_cache = cache.get(uid)
                    except KeyError:
                        continue
                    cached[uid] = found_in_cache if shared else copy.deepcopy(found_in_cache)
        newer = self.queries.events_after({uid: a.version for uid, a in cached.items()})
        found: dict[str, DataSubject] = {}
        for uid, subject_id in wanted.items():
            aggregate: Any
            if uid in cached:
                aggregate = cached[uid]
                if uid in newer:
                    events = [self.mapper.to_domain_event(e) for e in newer[uid]]
                    aggregate = project(aggregate, events)
                    if shared:  # a copy brought up to date stays private to its reader
                        cache.put(uid, aggregate)
            else:
                try:
                    # Under the lock: the library copies from its cache if the writer
                    # has put the subject there meanwhile.
                    with self._writing:
                        aggregate = self.repository.get(
                            uid, projector_func=project, deepcopy_from_cache=not shared
                        )
                except AggregateNotFoundError:
                    continue
            if isinstance(aggregate, DataSubject):
                found[subject_id] = aggregate
        return found

    def _reload(self, subject_id: str) -> DataSubject:
        """The subject as stored, for a unit of work that changed its cached instance."""
        self._forget([subject_id])
        found = self.load_subjects([subject_id], shared=True).get(subject_id)
        if found is None:
            raise unknown_subject(subject_id)
        return found

    def _forget(self, subject_ids: Iterable[str]) -> None:
        """Drop these subjects from the cache: their cached instances may hold unsaved changes."""
        cache: Any = self.repository.cache
        if cache is None:
            return
        for subject_id in subject_ids:
            try:
                cache.get(UUID(subject_id), evict=True)
            except (KeyError, ValueError):
                continue

    def existing_subjects(self, subject_ids: Sequence[str]) -> set[str]:
        """Which of these ids are registered already: one query for a whole batch.

        Checked before any key is written, so a duplicate registration never creates a
        key; one registered concurrently after this read is caught by the event store's
        unique constraint, and the retry reads again.
        """
        return set(self.queries.registrations(subject_ids))

    def subject_exists(self, subject_id: str) -> bool:
        try:
            self.load_subject(subject_id)
        except LedgerError:
            return False
        return True

    # -- logging ----------------------------------------------------------------------

    def _log(
        self,
        commands: Sequence[Command | LedgerError],
        results: list[dict[str, Any]] | None,
        rejected: _Rejected | None,
        started: float,
    ) -> None:
        """One line per command in small transactions; a summary line for large batches.

        Rejections are always logged one by one. Lines carry ids, types and codes only.
        """
        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        for index, command in enumerate(commands):
            code = None
            if isinstance(command, LedgerError):
                code = command.code
            elif rejected is not None and index == rejected.index:
                code = rejected.error.code
            elif rejected is None and results is not None and not results[index]["ok"]:
                code = results[index]["error"]["code"]
            if code is not None:
                log.info(
                    "command_rejected",
                    type=None if isinstance(command, LedgerError) else command.type,
                    subject=None if isinstance(command, LedgerError) else command.subject,
                    actor=None if isinstance(command, LedgerError) else command.actor,
                    code=code,
                    duration_ms=elapsed_ms,
                )
        if rejected is not None or results is None:
            return
        written = [
            (command, result)
            for command, result in zip(commands, results, strict=True)
            if isinstance(command, Command) and result["ok"]
        ]
        if len(commands) <= BATCH_LOG_THRESHOLD:
            for command, result in written:
                log.info(
                    "command",
                    type=command.type,
                    subject=command.subject or result.get("subject"),
                    actor=command.actor,
                    duration_ms=elapsed_ms,
                )
        elif written:
            log.info(
                "batch",
                commands=len(written),
                types=sorted({command.type for command, _ in written}),
                subjects=len(
                    {command.subject or result.get("subject") for command, result in written}
                ),
                actors=sorted({command.actor for command, _ in written if command.actor}),
                duration_ms=elapsed_ms,
            )


class _Rejected(Exception):
    """A command of an atomic batch that the rules reject: the batch is not written."""

    def __init__(self, index: int, error: LedgerError) -> None:
        super().__init__(error.message)
        self.index = index
        self.error = error

    @staticmethod
    def of(share: Share) -> _Rejected:
        """The rejection another process's share ended with."""
        assert share.rejected is not None
        return (_Unparsable if share.unparsable else _Rejected)(share.rejected[0], share.error())


class _Unparsable(_Rejected):
    """A command of an atomic batch that does not parse: named before any rule's rejection,
    as when the whole batch is parsed first."""


def _parse_share(
    parse: Callable[[Any, str | None], Command],
    commands: Iterable[tuple[int, Any]],
    actor: str | None,
) -> list[tuple[int, Command]]:
    """A share of a batch, parsed, each command with its place; the first that does not
    parse is raised as `_Unparsable`."""
    parsed: list[tuple[int, Command]] = []
    for index, data in commands:
        try:
            parsed.append((index, parse(data, actor)))
        except LedgerError as error:
            raise _Unparsable(index, error) from None
    return parsed


class _RowsAhead:
    """The events of a share's subjects that have had their last command, handed over
    while the share's other commands run (`ledger.parallel`): the writing process
    inserts them meanwhile, and after the share only the rest is left to insert.

    Every `ROWS_AHEAD_EVERY` commands, the subjects finished since are taken out of the
    unit of work's pending events (with what the share reports of them: which are new,
    which keys they shred, their snapshots). A command changes its own subject only, so
    a finished subject changes no more in this share. If the share is rejected later,
    the writing process rolls back what it inserted.
    """

    def __init__(
        self,
        app: LedgerApplication,
        uow: UnitOfWork,
        parsed: Sequence[tuple[int, Command]],
        send: Callable[[list[EventRow]], bool],
    ) -> None:
        self._app = app
        self._uow = uow
        self._send = send
        last: dict[str, int] = {}
        for position, (_, command) in enumerate(parsed):
            if command.subject:
                last[command.subject] = position
        self._finishing = sorted(last, key=last.__getitem__)  # in the order they finish
        self._last = last
        self._taken = 0  # of `_finishing`
        self._open = True  # the other end takes more
        self._kept: list[EventRow] = []  # taken out, then not taken by the other end
        self.registered_now: set[str] = set()
        self.shreds: list[tuple[str, str, list[str]]] = []
        self.snapshots: list[StoredEvent] = []

    def after(self, position: int) -> None:
        """The command at `position` of the share has run."""
        if not self._open or (position + 1) % ROWS_AHEAD_EVERY:
            return
        start = self._taken
        while self._taken < len(self._finishing) and (
            self._last[self._finishing[self._taken]] <= position
        ):
            self._taken += 1
        finished = self._finishing[start : self._taken]
        if not finished:
            return
        self.registered_now |= self._uow.registered_now(finished)
        self.shreds.extend(self._uow.shredded_keys(finished))
        subjects = self._uow.subjects
        rows, snapshots = self._app._stored(subjects[s] for s in finished if s in subjects)
        self.snapshots.extend(snapshots)
        if rows and not self._send(rows):
            self._open = False
            self._kept = rows

    def add_to(self, share: Share) -> None:
        """What the share reports of the subjects whose events went ahead (and their
        events, if the other end did not take them)."""
        share.events[:0] = self._kept
        share.registered_now |= self.registered_now
        share.shreds[:0] = self.shreds
        share.snapshots[:0] = self.snapshots


class _SplitBatch:
    """An atomic batch split between two processes: the commands as sent, each share's
    part of them, this process's share once parsed, and what the other said of its own."""

    def __init__(self, commands: Sequence[Any], actor: str | None) -> None:
        self.count = len(commands)
        self.actor = actor
        self.mine, self.theirs = split_by_subject(list(enumerate(commands)))
        self._parsed: list[tuple[int, Command]] | None = None
        self._briefs: list[tuple[int, str, str | None, str | None]] = []

    def parse_mine(self, parse: Callable[[Any, str | None], Command]) -> list[tuple[int, Command]]:
        """This process's share, parsed (once, on the first attempt). A command that does
        not parse is reported as the earliest of the whole batch's would be."""
        if self._parsed is None:
            try:
                self._parsed = _parse_share(parse, self.mine, self.actor)
            except _Unparsable as unparsable:
                earlier = [(i, data) for i, data in self.theirs if i < unparsable.index]
                _parse_share(parse, earlier, self.actor)  # raises the earlier one, if any
                raise
        return self._parsed

    def received(self, share: Share) -> Share:
        """Keep what the log needs of the other share's commands."""
        self._briefs = share.briefs
        return share

    def named(self) -> set[str]:
        """The subjects this process's share names (once parsed)."""
        return {c.subject for _, c in self._parsed or () if c.subject}

    def logged(self) -> list[Command | LedgerError]:
        """Every command of the batch as the log needs it: the other process's share by
        type, subject and actor only (it was parsed there)."""
        commands: list[Command | LedgerError] = [
            LedgerError("invalid_command", "not parsed")
        ] * self.count
        for index, command in self._parsed or ():
            commands[index] = command
        for index, kind, subject, actor in self._briefs:
            commands[index] = Command(type=kind, fields={}, subject=subject, raw={}, actor=actor)
        return commands
