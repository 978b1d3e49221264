"""LedgerApplication: executes commands against DataSubject aggregates (DESIGN 3).

A command travels: parse (`commands`) → load aggregates → the aggregate checks the rules
and, through the sealer, encrypts personal values with the subject's scope keys → one
transaction saves every event of the unit of work → keys of shredded scopes are destroyed
(after the `ScopeShredded` event is safe, DESIGN 4.3).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import orjson
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Recording, Transcoder
from eventsourcing.utils import EnvType

from ledger.canonical import canonical_json
from ledger.clock import Clock, SystemClock
from ledger.collector import collector_paused
from ledger.commands import Command, parse_command
from ledger.config import Settings
from ledger.crypto.keystore import KeyConflict, KeySession, KeyStore
from ledger.crypto.lookup import LOOKUP_KINDS, lookup_digest, normalise_identifier
from ledger.crypto.sealing import seal
from ledger.domain.calendar import local_date
from ledger.domain.policy import PolicyCatalogue
from ledger.domain.subject import DataSubject, check_cpr
from ledger.errors import LedgerError, unknown_subject
from ledger.eventstore import EventStoreQueries
from ledger.logs import get_logger
from ledger.policies import load_policy

log = get_logger("ledger.app")

CLOCK_SKEW = timedelta(minutes=1)
MAX_ATTEMPTS = 30  # a writer racing a busy one on the same subject may lose many times
BATCH_LOG_THRESHOLD = 20
RECEIPT_NAMESPACE = UUID("6f1c1a52-4d1e-4bb5-9a57-0c9b1c1ad0e5")


class OrjsonTranscoder(Transcoder):
    """Events hold plain JSON values; only the library's own times are datetimes.

    Those are an event's `timestamp` and, inside a snapshot's `state`, the aggregate's
    `_created_on` and `_modified_on`.
    """

    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def decode(self, data: bytes) -> Any:
        state = orjson.loads(data)
        _to_datetime(state, "timestamp")
        inner = state.get("state")
        if isinstance(inner, dict) and "topic" in state:
            _to_datetime(inner, "_created_on")
            _to_datetime(inner, "_modified_on")
        return state


def _to_datetime(state: dict[str, Any], key: str) -> None:
    value = state.get(key)
    if isinstance(value, str):
        state[key] = datetime.fromisoformat(value)


def project(aggregate: Any, events: Iterable[Any]) -> Any:
    """The library's `project_aggregate` without its per-event runtime Protocol assertion.

    Every event this application stores is an `Aggregate.Event`; on Python 3.11 an
    `isinstance` against a runtime-checkable Protocol costs ~25 µs, a tenth of a command.
    """
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


class CommandReceipt(Aggregate):
    """The first result of a command sent with an idempotency key.

    Saved in the same transaction as the command's events; its id is derived from the key,
    so a concurrent repeat collides on the event store's unique constraint.
    """

    class Received(Aggregate.Created):
        payload_hash: str
        result: dict[str, Any]
        period: str | None = None  # whose receipt key made the hash (None: the lookup key)

    def __init__(
        self, payload_hash: str, result: dict[str, Any], period: str | None = None
    ) -> None:
        self.payload_hash = payload_hash
        self.result = result
        self.period = period

    @staticmethod
    def id_for(key: str) -> UUID:
        return uuid.uuid5(RECEIPT_NAMESPACE, key)

    @classmethod
    def issue(
        cls, key: str, payload_hash: str, result: dict[str, Any], period: str
    ) -> CommandReceipt:
        return cls._create(
            cls.Received,
            id=cls.id_for(key),
            payload_hash=payload_hash,
            result=result,
            period=period,
        )


RECEIPTS_HONOURED = timedelta(days=7)
"""How long an idempotency key is honoured at least; its receipt key goes within 14 days."""


def receipt_period(moment: datetime) -> str:
    """The ISO week (Copenhagen) whose receipt key hashes a command received at `moment`."""
    year, week, _ = local_date(moment).isocalendar()
    return f"{year}-W{week:02d}"


def payload_hash(raw: dict[str, Any], key: bytes) -> str:
    """Keyed (HMAC under a key-store key): the command holds personal values, and a plain
    hash in a receipt would let the event store alone confirm a guessed CPR number. The
    key is the receipt key of the week (`KeyStore.receipt_key`), destroyed when the week's
    receipts are no longer honoured, so no receipt confirms anything for long, not even
    to whoever holds the key store (receipts made before these keys used the lookup key)."""
    body = {k: v for k, v in raw.items() if k != "idempotency_key"}
    message = b"ledger/v1/receipt\x00" + canonical_json(body)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _shredding_pending(subject: DataSubject, kid: str) -> bool:
    """Whether this key's shredding is among the subject's events not yet saved."""
    return any(
        isinstance(event, DataSubject.ScopeShredded) and kid in event.kids
        for event in subject.pending_events
    )


class ScopeSealer:
    """Seals values for one unit of work with the keys of its key session."""

    def __init__(self, session: KeySession, uow: UnitOfWork | None = None) -> None:
        self.session = session
        self.uow = uow

    def seal(self, subject: str, scope: str, category: str, value: Any) -> dict[str, str]:
        key = self.session.key_for_sealing(subject, scope)
        loaded = self.uow.subjects.get(subject) if self.uow is not None else None
        if loaded is not None and key.kid in loaded.scopes.get(scope, {}).get("shredded", {}):
            if _shredding_pending(loaded, key.kid):
                # An earlier command of this unit of work shredded the scope (an erasure,
                # then a bookkeeping entry for the same year): a new generation, as for a
                # returning customer. Retrying could never help: the erasure comes again.
                key = self.session.renew(subject, scope)
            else:
                # The session read its keys before the subject was loaded, and another
                # process shredded the scope in between: retry with freshly read keys.
                raise KeyConflict("the scope was shredded while this unit of work ran")
        sealed = seal(
            key.key, subject=subject, scope=scope, kid=key.kid, category=category, value=value
        )
        return sealed.to_dict()


@dataclass
class Checkpoint:
    """The state of a unit of work before one command of a group."""

    subject_id: str | None
    subject: DataSubject | None  # a copy, unless `unchanged`
    unchanged: bool  # loaded and not changed yet: reload instead of copying
    receipts: int
    lookups: dict[str, bytes] | None


@dataclass
class UnitOfWork:
    """Everything one transaction will write."""

    registered: set[str] = field(default_factory=set)  # chosen ids already in the store
    subjects: dict[str, DataSubject] = field(default_factory=dict)
    receipts: list[CommandReceipt] = field(default_factory=list)
    lookups: dict[str, dict[str, bytes]] = field(default_factory=dict)
    # read once per unit of work, not per command, and never kept beyond it: the sweeper
    # destroys a week's key when its receipts are no longer honoured
    receipt_keys: dict[str, bytes] = field(default_factory=dict)

    def checkpoint(self, subject_id: str | None) -> Checkpoint:
        """What one command may change, so a rejected command can be undone in a group.

        A subject this unit of work has not changed yet is not copied: undoing means
        loading it again.
        """
        subject = self.subjects.get(subject_id) if subject_id else None
        lookups = dict(self.lookups.get(subject_id, {})) if subject_id else None
        unchanged = subject is not None and not subject.pending_events
        copied = None if unchanged else copy.deepcopy(subject)
        return Checkpoint(subject_id, copied, unchanged, len(self.receipts), lookups)

    def restore(self, saved: Checkpoint | None, load: Callable[[str], DataSubject]) -> None:
        if saved is None:
            return
        del self.receipts[saved.receipts :]
        subject_id = saved.subject_id
        if subject_id is None:
            return
        if saved.unchanged:
            self.subjects[subject_id] = load(subject_id)
        elif saved.subject is None:
            self.subjects.pop(subject_id, None)
        else:
            self.subjects[subject_id] = saved.subject
        if not saved.lookups:
            self.lookups.pop(subject_id, None)
        else:
            self.lookups[subject_id] = saved.lookups

    def shredded_keys(self) -> list[tuple[str, str, list[str]]]:
        """The keys that the pending `ScopeShredded` events say must be destroyed."""
        return [
            (subject_id, event.scope, list(event.kids))
            for subject_id, subject in self.subjects.items()
            for event in subject.pending_events
            if isinstance(event, DataSubject.ScopeShredded)
        ]


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
    ) -> None:
        """`env` alone gives a read-only application (what projection runners construct)."""
        super().__init__(env=env)
        policy_path = self.env.get("LEDGER_POLICY")
        self.policy = policy or load_policy(Path(policy_path) if policy_path else None)
        self._keystore = keystore
        self.clock: Clock = clock or SystemClock()
        self.queries = EventStoreQueries(self.recorder)
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

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """Save the pending events of these aggregates in one transaction.

        The library's `save` accepts aggregates or events and tells them apart with
        runtime Protocol checks (two per object, ~50 µs on Python 3.11); this application
        only ever saves aggregates, so it collects their events directly. Once saved, an
        aggregate is what the cache holds (see `load_subjects`): callers do not change it
        after saving.
        """
        processing: ProcessingEvent[UUID] = ProcessingEvent()
        for aggregate in objs:
            processing.events.extend(aggregate.collect_events())
            processing.aggregates[aggregate.id] = aggregate
        processing.saved_kwargs.update(kwargs)
        recordings = self._record(processing)
        try:  # the events are written: a snapshot is only a shortcut for reading them
            self._take_snapshots(processing)
        except Exception as exc:
            log.error("snapshots_not_written", error=type(exc).__name__)
        self._notify(recordings)
        return recordings

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        """Snapshot each aggregate whose saved events crossed its interval, as saved.

        The library re-reads the aggregate from the store to snapshot it (two queries and a
        transaction each); the aggregate just saved already is that state. All snapshots
        of one save are written together.
        """
        if self.snapshots is None:
            return
        due: dict[UUID, Any] = {}
        for event in processing_event.events:
            aggregate = processing_event.aggregates.get(event.originator_id)
            interval = self.snapshotting_intervals.get(type(aggregate))
            if interval and event.originator_version % interval == 0:
                due[event.originator_id] = aggregate
        if due:
            self.snapshots.put([type(a).Snapshot.take(a) for a in due.values()])

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
            return self._execute_many(commands, actor=actor, atomic=atomic)

    def _execute_many(
        self, commands: Sequence[Any], *, actor: str | None, atomic: bool
    ) -> list[dict[str, Any]]:
        started = time.perf_counter()
        parsed: list[Command | LedgerError] = []
        for index, data in enumerate(commands):
            try:
                parsed.append(self._parse(data, actor))
            except LedgerError as error:
                if atomic:
                    return self._rolled_back(len(commands), index, error)
                parsed.append(error)
        for attempt in range(MAX_ATTEMPTS):
            try:
                results = self._attempt(parsed, atomic=atomic)
            except _Rejected as rejected:
                self._log(parsed, None, rejected, started)
                return self._rolled_back(len(commands), rejected.index, rejected.error)
            except (IntegrityError, KeyConflict):
                # Another writer got there first (same subject version, or the same
                # idempotency key): load fresh state and try again.
                time.sleep(0.001 * min(2**attempt, 64) * random.uniform(0.5, 1.5))
                continue
            self._log(parsed, results, None, started)
            return results
        conflict = LedgerError("conflict", "concurrent writers kept changing these subjects; retry")
        return self._rolled_back(len(commands), 0, conflict)

    def _parse(self, data: Any, actor: str | None) -> Command:
        command = parse_command(data)
        if actor is not None and command.actor is None:
            command = replace(command, actor=actor)
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
        self, commands: Sequence[Command | LedgerError], *, atomic: bool
    ) -> list[dict[str, Any]]:
        """One try at the unit of work: rules and sealing, keys, then events.

        The subjects are the cached instances themselves, changed in place (copying each
        one was a tenth of a command's CPU): if anything fails before they are saved, they
        are dropped from the cache and read again next time.
        """
        with self._writing:
            uow = UnitOfWork()
            try:
                return self._attempt_in_place(uow, commands, atomic=atomic)
            except BaseException:
                named = {c.subject for c in commands if isinstance(c, Command) and c.subject}
                self._forget({*uow.subjects, *named})
                raise

    def _attempt_in_place(
        self, uow: UnitOfWork, commands: Sequence[Command | LedgerError], *, atomic: bool
    ) -> list[dict[str, Any]]:
        chosen = [
            c.subject
            for c in commands
            if isinstance(c, Command) and c.type == "register_subject" and c.subject
        ]
        uow.registered = self.existing_subjects(chosen)
        registering = set(chosen)
        uow.subjects.update(
            self.load_subjects(
                {
                    c.subject
                    for c in commands
                    if isinstance(c, Command) and c.subject and c.subject not in registering
                },
                shared=True,
            )
        )
        session = self.keystore.session(
            c.subject for c in commands if isinstance(c, Command) and c.subject
        )
        sealer = ScopeSealer(session, uow)
        results: list[dict[str, Any]] = []
        try:
            for index, command in enumerate(commands):
                if isinstance(command, LedgerError):
                    results.append(command.to_result())
                    continue
                saved = None if atomic else uow.checkpoint(command.subject)
                keys = session.checkpoint()
                try:
                    results.append(self._run_one(uow, sealer, command))
                except LedgerError as error:
                    if atomic:
                        raise _Rejected(index, error) from None
                    uow.restore(saved, self._reload)
                    session.rollback_to(keys)
                    results.append(error.to_result())
            session.commit()
        finally:
            session.forget()
        shreds = uow.shredded_keys()
        registered_now = {
            subject_id
            for subject_id, subject in uow.subjects.items()
            if subject.pending_events and subject.pending_events[0].originator_version == 1
        }
        if any(s.pending_events for s in uow.subjects.values()) or uow.receipts:
            self.save(*uow.subjects.values(), *uow.receipts)
        self._after_save(uow, registered_now, shreds)
        return results

    def _after_save(
        self,
        uow: UnitOfWork,
        registered_now: set[str],
        shreds: list[tuple[str, str, list[str]]],
    ) -> None:
        """The key store's part after the events are written. The events are the truth and
        are written now: a failure here must not report them as not written (a caller
        would send them again, a group commit would run them again). Each part fails
        safe instead, as after a crash at this point:

        - index rows come after the events, so a row never points at data that was not
          written; without them an identifier is unfindable until `ledger keys reindex`,
          never a wrong match;
        - keys come after their `ScopeShredded` events; the key reconciler destroys any
          key such an event names (it runs after every write, and at each sweep).
        """
        if uow.lookups:
            try:
                self.keystore.replace_lookups(
                    [
                        (subject_id, kind, digest)
                        for subject_id, kinds in uow.lookups.items()
                        for kind, digest in kinds.items()
                    ],
                    new_subjects=registered_now,
                )
            except Exception as exc:
                log.error(
                    "lookup_rows_not_written", subjects=len(uow.lookups), error=type(exc).__name__
                )
        if shreds:
            try:
                self.keystore.shred_many(shreds)
            except Exception as exc:
                log.error("keys_left_to_reconciler", keys=len(shreds), error=type(exc).__name__)

    def _run_one(self, uow: UnitOfWork, sealer: ScopeSealer, command: Command) -> dict[str, Any]:
        now = self.clock.now()
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
        handler = getattr(self, f"_do_{command.type}")
        extra: dict[str, Any] = handler(uow, sealer, command, occurred_at)
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
        found = self.queries.registered_among([UUID(s) for s in subject_ids])
        return {str(uid) for uid in found}

    def subject_exists(self, subject_id: str) -> bool:
        try:
            self.load_subject(subject_id)
        except LedgerError:
            return False
        return True

    def _subject(self, uow: UnitOfWork, command: Command) -> DataSubject:
        subject_id = command.subject
        assert subject_id is not None
        found = uow.subjects.get(subject_id)
        if found is None:
            found = self.load_subject(subject_id)
            uow.subjects[subject_id] = found
        return found

    # -- index ------------------------------------------------------------------------

    def _digest(self, kind: str, value: Any) -> bytes | None:
        """The lookup digest of an identifier category (validating its form), else None."""
        if kind not in LOOKUP_KINDS:
            return None
        if not isinstance(value, str):
            raise LedgerError("invalid_command", f"a {kind} identifier must be a string")
        try:
            normalised = normalise_identifier(kind, value)
        except ValueError:
            code = "invalid_cpr" if kind == "cpr" else "invalid_command"
            raise LedgerError(code, f"not a valid {kind}") from None
        return lookup_digest(self.keystore.lookup_key(), kind, normalised)

    def _index(
        self, uow: UnitOfWork, subject: DataSubject, kind: str, digest: bytes | None
    ) -> None:
        if digest is not None:
            uow.lookups.setdefault(subject.subject_id, {})[kind] = digest

    # -- handlers: one per command type (DESIGN 5.1) ----------------------------------

    def _do_register_subject(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        subject_id = c.get("subject") or str(uuid.uuid4())
        if subject_id in uow.subjects or subject_id in uow.registered:
            raise LedgerError("duplicate", f"subject {subject_id} is already registered")
        provided_by = c.get("provided_by")
        if provided_by is not None and provided_by not in uow.subjects:
            self.load_subject(provided_by)
        identifiers: dict[str, str] = c.get("identifiers") or {}
        if c.get("cpr_ground") and "cpr" not in identifiers:
            raise LedgerError("invalid_command", "cpr_ground given without a cpr identifier")
        subject = DataSubject.register(
            UUID(subject_id),
            policy=self.policy,
            kind=c.fields["kind"],
            purpose=c.fields["purpose"],
            legal_basis=c.fields["legal_basis"],
            provided_by=provided_by,
            occurred_at=at,
            actor=c.actor,
        )
        digests = {kind: self._digest(kind, value) for kind, value in identifiers.items()}
        if "cpr" in identifiers:
            check_cpr(identifiers["cpr"], c.get("cpr_ground"))
        for kind in ("cpr", "email", "phone", "customer_number", "cvr"):
            if kind not in identifiers:
                continue
            subject.collect(
                policy=self.policy,
                sealer=sealer,
                category=kind,
                value=identifiers[kind],
                purpose=c.fields["purpose"],
                legal_basis=c.fields["legal_basis"],
                source="third_party" if provided_by else "subject",
                occurred_at=at,
                actor=c.actor,
                cpr_ground=c.get("cpr_ground") if kind == "cpr" else None,
            )
        uow.subjects[subject_id] = subject
        for kind, digest in digests.items():
            if digest is not None:
                uow.lookups.setdefault(subject_id, {})[kind] = digest
        return {"subject": subject_id}

    def _do_collect(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        subject = self._subject(uow, c)
        category = c.fields["category"]
        value = c.fields["value"]
        digest = self._digest(category, value) if category != "cpr" else None
        subject.collect(
            policy=self.policy,
            sealer=sealer,
            category=category,
            value=value,
            purpose=c.fields["purpose"],
            legal_basis=c.fields["legal_basis"],
            source=c.fields["source"],
            occurred_at=at,
            actor=c.actor,
            competition=c.get("competition"),
            cpr_ground=c.get("cpr_ground"),
        )
        if category == "cpr":
            digest = self._digest(category, value)
        self._index(uow, subject, category, digest)
        return {}

    def _do_rectify(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        subject = self._subject(uow, c)
        digest = self._digest(c.fields["category"], c.fields["value"])
        subject.rectify(
            policy=self.policy,
            sealer=sealer,
            category=c.fields["category"],
            value=c.fields["value"],
            request=c.get("request"),
            occurred_at=at,
            actor=c.actor,
        )
        self._index(uow, subject, c.fields["category"], digest)
        return {}

    def _do_give_consent(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).give_consent(
            policy=self.policy,
            purpose=c.fields["purpose"],
            notice_version=c.fields["notice_version"],
            method=c.fields["method"],
            channels=c.get("channels") or [],
            explicit=bool(c.get("explicit", False)),
            categories=c.get("categories") or [],
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_withdraw_consent(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).withdraw_consent(
            policy=self.policy,
            purpose=c.fields["purpose"],
            channels=c.get("channels") or [],
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_object(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).object(
            policy=self.policy, purpose=c.fields["purpose"], occurred_at=at, actor=c.actor
        )
        return {}

    def _do_restrict(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).restrict(reason=c.get("reason"), occurred_at=at, actor=c.actor)
        return {}

    def _do_lift_restriction(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).lift_restriction(
            reason=c.get("reason"), occurred_at=at, actor=c.actor
        )
        return {}

    def _do_agree_disclosure(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        agreement = str(uuid.uuid4())
        recipient = c.fields["recipient"]
        self._subject(uow, c).agree_disclosure(
            policy=self.policy,
            sealer=sealer,
            agreement=agreement,
            recipient_kind=recipient["kind"],
            recipient_name=recipient["name"],
            country=recipient["country"],
            categories=c.fields["categories"],
            purpose=c.fields["purpose"],
            valid_until=c.get("valid_until"),
            occurred_at=at,
            actor=c.actor,
        )
        return {"agreement": agreement}

    def _do_revoke_disclosure_agreement(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).revoke_disclosure_agreement(
            agreement=c.fields["agreement"], occurred_at=at, actor=c.actor
        )
        return {}

    def _do_disclose(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).disclose(
            policy=self.policy,
            agreement=c.fields["agreement"],
            categories=c.fields["categories"],
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_transfer(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).transfer(
            policy=self.policy,
            categories=c.fields["categories"],
            country=c.fields["country"],
            recipient=c.fields["recipient"],
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_process(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).process(
            policy=self.policy,
            purpose=c.fields["purpose"],
            activity=c.fields["activity"],
            channel=c.get("channel"),
            categories=c.get("categories") or [],
            occurred_at=at,
            actor=c.actor,
            legal_basis=c.get("legal_basis"),
        )
        return {}

    def _do_start_relationship(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).start_relationship(
            policy=self.policy,
            relationship=c.fields["relationship"],
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_end_relationship(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).end_relationship(
            relationship=c.fields["relationship"], occurred_at=at, actor=c.actor
        )
        return {}

    def _do_record_dialogue(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).record_dialogue(occurred_at=at, actor=c.actor)
        return {}

    def _do_enter_competition(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).enter_competition(
            policy=self.policy,
            competition=c.fields["competition"],
            ends_on=c.fields["competition_ends_on"],
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_notify_subject(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).notify(
            policy=self.policy,
            notice=c.fields["notice"],
            policy_version=c.fields["policy_version"],
            purpose=c.get("purpose"),
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_place_legal_hold(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        hold = str(uuid.uuid4())
        self._subject(uow, c).place_legal_hold(
            hold=hold, reason=c.fields["reason"], occurred_at=at, actor=c.actor
        )
        return {"hold": hold}

    def _do_release_legal_hold(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).release_legal_hold(
            hold=c.fields["hold"], occurred_at=at, actor=c.actor
        )
        return {}

    def _do_open_request(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        request = str(uuid.uuid4())
        due = self._subject(uow, c).open_request(
            request=request,
            right=c.fields["right"],
            received_at=c.get("received_at") or at,
            occurred_at=at,
            actor=c.actor,
        )
        return {"request": request, "due": due}

    def _do_verify_identity(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).verify_identity(
            request=c.fields["request"], occurred_at=at, actor=c.actor
        )
        return {}

    def _do_extend_request(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        due = self._subject(uow, c).extend_request(
            request=c.fields["request"], reason=c.fields["reason"], occurred_at=at, actor=c.actor
        )
        return {"due": due}

    def _do_complete_request(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).complete_request(
            request=c.fields["request"],
            outcome=c.fields["outcome"],
            note=c.get("note"),
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_erase(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        subject = self._subject(uow, c)
        outcome = subject.erase(
            policy=self.policy, request=c.get("request"), occurred_at=at, actor=c.actor
        )
        return {"shredded": outcome.shredded, "retained": outcome.retained}

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
    def __init__(self, index: int, error: LedgerError) -> None:
        super().__init__(error.message)
        self.index = index
        self.error = error


def application_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing environment for the configured database."""
    db = settings.database
    if db.backend == "sqlite":
        assert db.sqlite_path is not None
        db.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(db.sqlite_path),
            "SQLITE_LOCK_TIMEOUT": "30",
            "CREATE_TABLE": "y",
            "AGGREGATE_CACHE_MAXSIZE": "1000",
            "AGGREGATE_CACHE_FASTFORWARD": "n",
        }
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": db.dbname,
        "POSTGRES_HOST": db.host,
        "POSTGRES_PORT": str(db.port),
        "POSTGRES_USER": db.user,
        "POSTGRES_PASSWORD": db.password,
        "POSTGRES_POOL_SIZE": "5",
        "POSTGRES_MAX_OVERFLOW": "10",
        "CREATE_TABLE": "y",
        "AGGREGATE_CACHE_MAXSIZE": "1000",
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "APPLICATION_RECORDER_TOPIC": "ledger.pgrecorder:CopyingPostgresRecorder",
    }
    if db.schema:
        env["POSTGRES_SCHEMA"] = db.schema
    return env
