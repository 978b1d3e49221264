"""`ReadModels`: open, catch up, rebuild, run and query the read models of a ledger.

Catching up reads the notification log page by page from the tracked position and
applies each page as one batch (rows and position in one transaction). It runs before
every query the ledger answers from the read models, so a query always sees every event
recorded before it; a worker (`run`) keeps them current in between, woken by PostgreSQL
LISTEN/NOTIFY through the library's subscription, or by polling on SQLite.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.application import Application
from eventsourcing.persistence import InfrastructureFactory, Notification
from eventsourcing.utils import Environment, EnvType

from ledger.collector import collector_paused
from ledger.domain.policy import PolicyCatalogue
from ledger.eventstore import EventStoreQueries, PageReader, RawNotification
from ledger.logs import get_logger
from ledger.persistence import OrjsonTranscoder
from ledger.projections.recorder import (
    FINGERPRINT,
    INDEXES_PENDING,
    Cursor,
    ReadModelRecorder,
    recorder_class,
)
from ledger.projections.schema import PROJECTION_NAME, fingerprint
from ledger.projections.state import SUBJECT_TOPICS, EventRecord
from ledger.projections.views import subject_document
from ledger.reconnect import Backoff, unavailable_errors

log = get_logger("ledger.projections")

BATCH = 1000
# Events per batch in a rebuild, as measured (26 Nov, alternating runs at 100k events):
# on SQLite 1,000 was 7 % quicker than 3,000 (a batch's rows stay in the CPU's caches;
# 2,000 and 3,000 tied with it once its statements stayed compiled). On PostgreSQL each
# batch waits for its COPYs and commit: 12,000 took 12 % less time than 3,000 (6,000: 6 %;
# 6 pairs each), for 107 MB of peak memory instead of 70 (a batch's rows, whatever the
# size of the log).
REBUILD_BATCH = {"sqlite": 1000, "postgres": 12000}
ABANDONED_AFTER = 60.0  # seconds without a batch after which a rebuild counts as dead
Progress = Callable[[int, int], None]
EventFilter = Callable[[EventRecord], bool]


@dataclass(frozen=True)
class Status:
    name: str
    application: str
    position: int
    head: int
    backend: str

    @property
    def lag(self) -> int:
        return max(self.head - self.position, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "projection": self.name,
            "application": self.application,
            "backend": self.backend,
            "position": self.position,
            "head": self.head,
            "lag": self.lag,
        }


def projection_env(app_env: Mapping[str, str]) -> Environment:
    """The read models' environment: the application's database, a small pool of its own."""
    env = dict(app_env)
    env.setdefault(f"{PROJECTION_NAME.upper()}_POSTGRES_POOL_SIZE", "1")
    env.setdefault(f"{PROJECTION_NAME.upper()}_POSTGRES_MAX_OVERFLOW", "4")
    env["CREATE_TABLE"] = "y"
    return Environment(PROJECTION_NAME, env)


def construct_recorder(env: EnvType) -> ReadModelRecorder:
    """The read-model recorder for an application environment, built by the library's factory."""
    environment = env if isinstance(env, Environment) else projection_env(env)
    factory = InfrastructureFactory[Any].construct(env=environment)
    try:
        recorder = factory.tracking_recorder(recorder_class(factory))  # creates the tables
    except BaseException:
        factory.close()  # its pool, and the pool's threads, which would keep trying
        raise
    assert isinstance(recorder, ReadModelRecorder)
    recorder.factory = factory  # type: ignore[attr-defined]  # closed with the recorder
    return recorder


class Decoder:
    """Notifications → `EventRecord`s, decoding only events about subjects."""

    def __init__(self, app: Application[Any]) -> None:
        mapper = app.mapper
        self._mapper = mapper
        plain = mapper.cipher is None and mapper.compressor is None
        self._fast = plain and isinstance(mapper.transcoder, OrjsonTranscoder)

    def __call__(self, notifications: Sequence[RawNotification]) -> list[EventRecord]:
        topics = SUBJECT_TOPICS
        if self._fast:  # the timestamp stays a string: nothing here needs it parsed
            loads = orjson.loads
            return [
                EventRecord(subject, version, position, topic, loads(state))
                for position, subject, version, topic, state in notifications
                if topic in topics
            ]
        records = []
        for position, subject, version, topic, state in notifications:
            if topic not in topics:
                continue
            # Through the application's own mapper, which opens a cipher or a compressor.
            event = self._mapper.to_domain_event(
                Notification(
                    id=position,
                    originator_id=UUID(subject),
                    originator_version=version,
                    topic=topic,
                    state=bytes(state),
                )
            )
            records.append(EventRecord(subject, version, position, topic, dict(vars(event))))
        return records


class ReadModels:
    """The read models of one ledger: a tracking recorder beside the application."""

    def __init__(
        self,
        app: Application[Any],
        recorder: ReadModelRecorder,
        policy: PolicyCatalogue,
        *,
        keep_ciphertext: bool = True,
        event_filter: EventFilter | None = None,
        batch_size: int = BATCH,
    ) -> None:
        self.app = app
        self.recorder = recorder
        self.policy = policy
        self.keep_ciphertext = keep_ciphertext
        self.event_filter = event_filter
        self.batch_size = batch_size
        self.rebuild_batch_size = max(batch_size, REBUILD_BATCH[recorder.dialect])
        self.decode = Decoder(app)
        self.events = EventStoreQueries(app.recorder)  # type: ignore[arg-type]
        self._lock = threading.RLock()
        self._checked = False
        self._index_check_at = time.monotonic()
        self.abandoned_after = ABANDONED_AFTER

    @classmethod
    def open(cls, app: Application[Any], policy: PolicyCatalogue) -> ReadModels:
        """The read models in the application's own database (created on first use)."""
        models = cls(app, construct_recorder(projection_env(app.env)), policy)
        try:
            models.ensure_current_schema()
        except BaseException:
            models.close()  # a database that went away: the next use opens them again
            raise
        return models

    def close(self) -> None:
        factory = getattr(self.recorder, "factory", None)
        if factory is not None:
            factory.close()

    @property
    def backend(self) -> str:
        return self.recorder.dialect

    # -- schema -----------------------------------------------------------------------

    def ensure_current_schema(self) -> bool:
        """Reset the read models if they were built by other code or another catalogue, and
        finish the indexes of an interrupted rebuild.

        Returns True if it reset them (the next catch-up replays every event).
        """
        if self._checked:
            return False
        expected = fingerprint(self.policy)
        meta = self.recorder.stored_meta()
        reset = False
        if meta.get(FINGERPRINT) != expected:
            log.warning("read_models_reset", reason="schema or policy changed")
            self.recorder.reset(expected)
            reset = True
        else:
            self._finish_abandoned_rebuild(meta)
        self._checked = True
        return reset

    def _finish_abandoned_rebuild(self, meta: Mapping[str, str] | None = None) -> None:
        """Create the indexes a rebuild left pending if its mark has not been renewed for
        `abandoned_after` seconds (the rebuild died); a live rebuild's are left alone."""
        self._index_check_at = time.monotonic()
        meta = self.recorder.stored_meta() if meta is None else meta
        mark = meta.get(INDEXES_PENDING)
        if mark is None or self.recorder.in_rebuild:
            return
        try:
            renewed = datetime.fromisoformat(mark)
        except ValueError:
            renewed = datetime.min.replace(tzinfo=UTC)
        if (datetime.now(UTC) - renewed).total_seconds() < self.abandoned_after:
            return
        log.warning("read_models_indexes_created", reason="a rebuild stopped before them")
        self.recorder.create_indexes()

    # -- keeping current --------------------------------------------------------------

    def position(self) -> int:
        return self.recorder.position()

    def head(self) -> int:
        return self.app.recorder.max_notification_id() or 0

    def status(self) -> Status:
        return Status(
            PROJECTION_NAME, self.app.name, self.position(), self.head(), self.recorder.dialect
        )

    def catch_up(
        self,
        *,
        until: int | None = None,
        progress: Progress | None = None,
        batch_size: int | None = None,
    ) -> int:
        """Apply every notification recorded so far (or up to `until`); returns how many.

        Runs synchronously to the log's current head, one transaction per batch.
        """
        batch_size = batch_size or self.batch_size
        with self._lock:
            head = self.head()
            target = head if until is None else min(until, head)
            position = self.position()
            done = 0
            if position < target:  # a query's check finds nothing to do: no connection held
                with self.events.pages() as pages:
                    done = self._apply_pages(pages, position, target, batch_size, progress)
            if time.monotonic() - self._index_check_at > self.abandoned_after:
                self._finish_abandoned_rebuild()  # long-lived processes: now and then
            return done

    def _apply_pages(
        self,
        pages: PageReader,
        position: int,
        target: int,
        batch_size: int,
        progress: Progress | None,
    ) -> int:
        done = 0
        while position < target:
            # A page is a range of ids; gaps (rolled-back ids) only make it shorter,
            # and a page that falls wholly in one reaches to the next id in use.
            upper = min(target, position + batch_size)
            ahead = (upper + 1, min(target, upper + batch_size)) if upper < target else None
            page = pages.page(position + 1, upper, ahead)
            if not page and upper < target:
                following = self.events.next_notification_id(upper)
                upper = target if following is None else min(target, following - 1)
            records = self.decode(page)
            if self.event_filter is not None:
                records = [r for r in records if self.event_filter(r)]
            applied = self.recorder.apply(
                records,
                upper,
                expected=position,
                policy=self.policy,
                keep_ciphertext=self.keep_ciphertext,
            )
            if applied:
                done += len(page)
                position = upper
            else:  # another writer moved on (or a rebuild went back): start from there
                position = self.position()
            if progress is not None:
                progress(position, target)
        return done

    def rebuild(self, *, progress: Progress | None = None) -> int:
        """Drop every read model and replay the whole notification log into it.

        The secondary indexes are created at the end, also when the rebuild is stopped
        (Ctrl-C, an error); until then queries are correct but slower. A rebuild killed
        outright leaves a mark in `rm_meta` that stops being renewed, and the next process
        to open or catch up with the read models a minute later creates them.
        """
        # the collector's passes over each batch's rows cost a tenth of a rebuild
        with self._lock, collector_paused():
            started = time.perf_counter()
            self.recorder.reset(fingerprint(self.policy), indexes=False)
            self._checked = True
            try:
                with self.recorder.rebuilding(self.events.registrations):
                    done = self.catch_up(progress=progress, batch_size=self.rebuild_batch_size)
            except BaseException:
                with contextlib.suppress(Exception):  # else the mark stays for another process
                    self.recorder.create_indexes()
                raise
            self.recorder.create_indexes()
            log.info(
                "read_models_rebuilt",
                events=done,
                seconds=round(time.perf_counter() - started, 3),
            )
            return done

    def run(
        self,
        stop: threading.Event,
        *,
        poll: float = 0.5,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """Keep the read models current until `stop` is set.

        On PostgreSQL the library's subscription (LISTEN/NOTIFY) wakes the worker when
        events are recorded; SQLite offers no subscription, so the worker polls. A
        database that goes away (a restart, a failover, its connections closed) is
        waited for: the worker logs it, tries again after a pause that doubles up to 30 s
        (`Backoff`), and goes on from its tracked position (nothing is applied twice: each
        batch commits with its position).
        """
        backoff = Backoff()
        while not stop.is_set():
            started = time.monotonic()
            try:
                self._follow(stop, poll=poll, on_batch=on_batch)
                return
            except unavailable_errors() as exc:
                if time.monotonic() - started > backoff.most:
                    backoff.succeeded()  # it had been working since the last failure
                pause = backoff.failed()
                log.warning(
                    "read_models_database_unavailable", error=type(exc).__name__, retry_in_s=pause
                )
                stop.wait(pause)

    def _follow(
        self,
        stop: threading.Event,
        *,
        poll: float,
        on_batch: Callable[[int], None] | None,
    ) -> None:
        applied = self.catch_up()
        if on_batch and applied:
            on_batch(applied)
        try:
            subscription = self.app.recorder.subscribe(gt=self.position())
        except NotImplementedError:
            while not stop.wait(poll):
                applied = self.catch_up()
                if on_batch and applied:
                    on_batch(applied)
            return

        def stop_subscription() -> None:
            stop.wait()
            subscription.stop()

        watcher = threading.Thread(target=stop_subscription, daemon=True)
        with subscription:
            watcher.start()
            reached = self.position()
            for notification in subscription:
                if stop.is_set():
                    break
                if notification.id <= reached:
                    continue  # applied already by an earlier catch-up
                applied = self.catch_up()
                reached = self.position()
                if on_batch and applied:
                    on_batch(applied)
        stop.set()

    # -- queries ----------------------------------------------------------------------

    @contextmanager
    def reading(self, *, current: bool = True) -> Iterator[Cursor]:
        """A consistent read of every table, after catching up (unless `current=False`).

        The read itself tells whether anything is left to apply (its tracking position
        against the log's head), so an up-to-date query costs one extra round trip.
        """
        head = self.head() if current else 0
        with self.recorder.reader() as cur:
            if self.recorder.position_in(cur) >= head:
                yield cur
                return
        self.catch_up()
        with self.recorder.reader() as cur:
            yield cur

    def subject(
        self, subject_id: str, keys: Mapping[str, bytes] | None = None, *, current: bool = True
    ) -> dict[str, Any]:
        """`subject show` from the read models; values opened only with the given keys."""
        with self.reading(current=current) as cur:
            return subject_document(cur, subject_id, keys)

    def query(self, sql: str, params: Sequence[Any] = (), *, current: bool = True) -> list[Any]:
        with self.reading(current=current) as cur:
            return cur.query(sql, params)
