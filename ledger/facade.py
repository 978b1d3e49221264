"""`Ledger`: the Python front door (DESIGN 5.5). The CLI and HTTP service use it too."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from ledger.app import LedgerApplication
from ledger.clock import Clock, SystemClock
from ledger.commands import free_text
from ledger.config import Settings
from ledger.crypto.keystore import KeyStore, KeyStoreError
from ledger.crypto.lookup import LOOKUP_KINDS, lookup_digest, normalise_identifier
from ledger.crypto.master import MasterKeyError, decode_master_key, load_master_key
from ledger.crypto.sealing import SealedValue, unseal
from ledger.domain.calendar import local_date
from ledger.domain.policy import PolicyCatalogue
from ledger.domain.subject import DataSubject
from ledger.errors import LedgerError, canonical_subject_id
from ledger.logs import configure_logging, get_logger
from ledger.parallel import SecondProcess
from ledger.persistence import application_env
from ledger.policies import load_policy
from ledger.projections import ReadModels
from ledger.queries import event_summary, request_is_late
from ledger.storage import creation_lock, private_file
from ledger.walcopy import WalCopier

log = get_logger("ledger")

REGISTERED_TOPIC = get_topic(DataSubject.Registered)
PAGE = 1000

Progress = Callable[[int, int], None]


T = TypeVar("T")


def _open_keystore(settings: Settings) -> KeyStore:
    """The key store under the configured master key; with a key file, finish a rotation
    that was cut short: `ledger keys rewrap` keeps the new key in `master.new` before the
    key store commits to it and moves it over `master.key` after, so a crash in between
    leaves a store that only `master.new` opens."""
    try:
        return KeyStore.open(settings.keystore, load_master_key(settings))
    except KeyStoreError:
        pending = settings.master_key_file.with_suffix(".new")
        if settings.master_key or not pending.exists():
            raise
        try:
            keystore = KeyStore.open(settings.keystore, decode_master_key(pending.read_text()))
        except (KeyStoreError, MasterKeyError):
            raise KeyStoreError(
                f"the master key does not match this key store, nor does {pending}"
            ) from None
        os.replace(pending, settings.master_key_file)
        log.warning("master_key_rotation_finished", key_file=str(settings.master_key_file))
        return keystore


class _KeysOnDemand(Mapping[str, bytes]):
    """A subject's live keys, read from the key store at the first lookup; remembers which
    it handed out, so the caller can check they were still live afterwards."""

    def __init__(self, read: Callable[[], dict[str, bytes]]) -> None:
        self._read = read
        self._keys: dict[str, bytes] | None = None
        self._used: set[str] = set()

    def _loaded(self) -> dict[str, bytes]:
        if self._keys is None:
            self._keys = self._read()
        return self._keys

    def __getitem__(self, kid: str) -> bytes:
        key = self._loaded()[kid]
        self._used.add(kid)
        return key

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def used(self) -> set[str]:
        return set(self._used)

    def clear(self) -> None:
        if self._keys is not None:
            self._keys.clear()


def _views_of(events: Iterable[object]) -> list[dict[str, Any]]:
    """The `DataViewed` events among a subject's events, as `Ledger.views` lists them."""
    return [
        {
            "viewed_at": vars(event)["occurred_at"],
            "recorded_at": event.timestamp.isoformat(),
            "actor": vars(event)["actor"],
            "purpose": vars(event)["purpose"],
            "categories": vars(event)["categories"],
        }
        for event in events
        if isinstance(event, DataSubject.DataViewed)
    ]


class Ledger:
    """An open ledger: the application, its key store and its policy."""

    def __init__(
        self,
        settings: Settings,
        app: LedgerApplication,
        keystore: KeyStore,
        policy: PolicyCatalogue,
    ) -> None:
        self.settings = settings
        self.app = app
        self.keystore = keystore
        self.policy = policy
        self._read_models: ReadModels | None = None
        self._read_models_lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        policy: PolicyCatalogue | None = None,
        batch_processes: int | None = None,
    ) -> Ledger:
        """Open (and on first use create) the ledger the environment describes.

        `batch_processes` overrides `settings.batch_processes` (`ledger.parallel`)."""
        settings = settings or Settings.from_env()
        # the owner's alone, like ~/.ssh: whatever is written inside is not for others
        settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        configure_logging(settings.log_path)
        policy = policy or load_policy(settings.policy_path)
        with creation_lock(settings.database, settings.keystore):
            private_file(settings.database.sqlite_path)
            keystore = _open_keystore(settings)
            app = LedgerApplication(
                env=application_env(settings),
                policy=policy,
                keystore=keystore,
                clock=clock or SystemClock(),
                keys_with_events=settings.database.backend == "postgres"
                and settings.keystore == settings.database,
            )
        if (batch_processes or settings.batch_processes) > 1:
            app.second_process = SecondProcess(settings, policy)
        sqlite_files = [
            url.sqlite_path
            for url in (settings.database, settings.keystore)
            if url.backend == "sqlite" and url.sqlite_path is not None
        ]
        if sqlite_files:
            app.wal_copier = WalCopier(sqlite_files)
        ledger = cls(settings, app, keystore, policy)
        ledger.reconcile_keys()
        return ledger

    def close(self) -> None:
        if self._read_models is not None:
            self._read_models.close()
        if self.app.second_process is not None:
            self.app.second_process.close()
        if self.app.wal_copier is not None:
            self.app.wal_copier.close()
        self.app.close()
        self.keystore.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def clock(self) -> Clock:
        return self.app.clock

    @property
    def read_models(self) -> ReadModels:
        """The read models (DESIGN 4.7), opened on first use; queries catch them up first."""
        with self._read_models_lock:
            if self._read_models is None:
                with creation_lock(self.settings.database):
                    self._read_models = ReadModels.open(self.app, self.policy)
            return self._read_models

    # -- commands ---------------------------------------------------------------------

    def execute(self, command: Any, *, actor: str | None = None) -> dict[str, Any]:
        """One command in its own transaction; returns the result object of DESIGN 5.2."""
        return self.app.execute(command, actor=actor)

    def execute_many(
        self, commands: Sequence[Any], *, actor: str | None = None
    ) -> list[dict[str, Any]]:
        """Commands in order in one transaction: all written, or none."""
        return self.app.execute_many(commands, actor=actor)

    # -- queries ----------------------------------------------------------------------

    def subject(
        self,
        subject_id: str,
        *,
        reveal: bool = False,
        purpose: str | None = None,
        actor: str | None = None,
    ) -> dict[str, Any]:
        """The subject's current state; a reveal needs a purpose and is recorded first."""
        subject_id = canonical_subject_id(subject_id)
        if not reveal:
            return self.read_models.subject(subject_id)
        subject = self.app.load_subject(subject_id)
        if not purpose or not purpose.strip():
            raise LedgerError("invalid_command", "revealing personal data needs a purpose")
        free_text("purpose", purpose)  # recorded in the clear in `DataViewed`, for good
        categories = sorted({item["category"] for item in subject.latest_items()})
        subject.record_view(
            purpose=purpose, categories=categories, occurred_at=self.clock.now(), actor=actor
        )
        self.app.save(subject)
        log.info("data_viewed", subject=subject_id, actor=actor, categories=len(categories))
        return self._opened(subject_id, lambda keys: self.read_models.subject(subject_id, keys))

    def _opened(self, subject_id: str, build: Callable[[Mapping[str, bytes]], T]) -> T:
        """`build` opens values with the subject's keys, read from the key store when it
        first needs one: after the read models caught up and their rows were read, not
        before (an erasure that returned during a slow catch-up was once still opened).
        If a key it used was destroyed meanwhile, the answer is built again without it:
        nothing is shown whose key's shredding has returned (DESIGN 4.3)."""
        for _ in range(3):
            keys = _KeysOnDemand(lambda: self.keystore.keys(subject_id))
            try:
                result = build(keys)
                used = keys.used()
            finally:
                keys.clear()
            if not used:
                return result
            live = {r.kid for r in self.keystore.records(subject_id) if r.shredded_at is None}
            if used <= live:
                return result
        raise LedgerError("conflict", "the subject's keys kept changing while it was read; retry")

    def find(self, kind: str, value: str) -> list[str]:
        """Subjects whose current identifier of this kind matches (keyed-hash lookup)."""
        if kind not in LOOKUP_KINDS:
            raise LedgerError("invalid_command", f"cannot look up by '{kind}'")
        try:
            normalised = normalise_identifier(kind, value)
        except ValueError:
            raise LedgerError("invalid_command", f"not a valid {kind}") from None
        digest = lookup_digest(self.keystore.lookup_key(), kind, normalised)
        return [s for s in self.keystore.find(kind, digest) if self.app.subject_exists(s)]

    def history(self, subject_id: str) -> list[dict[str, Any]]:
        """Metadata of every event of the subject, oldest first, without any value."""
        subject_id = canonical_subject_id(subject_id)
        self.app.load_subject(subject_id)
        return [event_summary(e) for e in self.app.events.get(UUID(subject_id))]

    def export(
        self, subject_id: str, *, portable: bool = False, actor: str | None = None
    ) -> dict[str, Any]:
        """The Art. 15 access answer (or, `portable`, the Art. 20 export); recorded as a view."""
        from ledger.exports import access_report, earlier_values, portable_export
        from ledger.projections.views import open_sealed

        subject_id = canonical_subject_id(subject_id)
        purpose = "data portability (Art. 20)" if portable else "access request (Art. 15)"
        view = self.subject(subject_id, reveal=True, purpose=purpose, actor=actor)
        now = self.clock.now()
        if portable:
            return portable_export(view, self.policy, generated_at=now)
        subject = self.app.load_subject(subject_id)
        events = list(self.app.events.get(UUID(subject_id)))
        earlier = self._opened(
            subject_id,
            lambda keys: earlier_values(
                subject,
                events,
                lambda sealed, category: open_sealed(subject_id, sealed, category, keys),
            ),
        )
        return access_report(
            subject,
            view,
            self.policy,
            _views_of(events),
            generated_at=now,
            earlier=earlier,
        )

    def views(self, subject_id: str) -> list[dict[str, Any]]:
        """Who read the subject's plaintext, when and why (CJEU C-579/21)."""
        subject_id = canonical_subject_id(subject_id)
        return _views_of(self.app.events.get(UUID(subject_id)))

    def requests(
        self, *, overdue: bool = False, now: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Every data subject request with its due date; `overdue`: open past due at `now`."""
        today = local_date(now or self.clock.now()).isoformat()
        found = []
        for subject_id in self.subject_ids():
            subject = self.app.load_subject(subject_id)
            for request in subject.requests.values():
                late = request_is_late(request, today)
                if overdue and not (request["status"] == "open" and late):
                    continue
                found.append({"subject": subject_id, **request, "late": late})
        return sorted(found, key=lambda r: (r["due"], r["request"]))

    # -- notifications ----------------------------------------------------------------

    def notifications(
        self, start: int = 1, topics: Sequence[str] = (), stop: int | None = None
    ) -> Iterator[Notification]:
        """Every recorded event in order, page by page."""
        position = start
        while True:
            page = self.app.recorder.select_notifications(
                start=position, limit=PAGE, stop=stop, topics=topics
            )
            if not page:
                return
            yield from page
            position = page[-1].id + 1

    def subject_ids(self) -> Iterator[str]:
        for notification in self.notifications(topics=[REGISTERED_TOPIC]):
            yield str(notification.originator_id)

    def max_position(self) -> int:
        return self.app.recorder.max_notification_id() or 0

    # -- retention --------------------------------------------------------------------

    def sweep(
        self,
        now: datetime | None = None,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Shred every scope past its retention deadline that no hold keeps (idempotent)."""
        from ledger.sweepers.retention import sweep

        report = sweep(self, now or self.clock.now(), dry_run=dry_run, progress=progress)
        return report.as_dict()

    def reconcile_keys(self) -> int:
        """Finish half-done shreddings (see `ledger.sweepers.keys`)."""
        from ledger.sweepers.keys import reconcile_keys

        return reconcile_keys(self)

    def reindex_lookups(self) -> int:
        """Rebuild every subject's identifier index rows from its sealed identifiers.

        For repair after a crash between saving events and writing index rows; an erased
        subject's rows are removed. Decrypts identifiers in memory only, to hash them;
        nothing is revealed to anyone.
        """
        rows: list[tuple[str, str, bytes]] = []
        lookup_key = self.keystore.lookup_key()
        for subject_id in self.subject_ids():
            subject = self.app.load_subject(subject_id)
            if subject.erased:  # rows a race once wrote back for an erased subject go
                self.keystore.remove_lookups(subject_id)
                continue
            keys = self.keystore.keys(subject_id)
            for kind in LOOKUP_KINDS:
                item = subject.latest_item(kind)
                if item is None or subject.is_shredded(item["value"]):
                    continue
                key = keys.get(item["value"]["kid"])
                if key is None:
                    continue
                value = unseal(
                    key, SealedValue.from_dict(item["value"]), subject=subject_id, category=kind
                )
                try:
                    normalised = normalise_identifier(kind, str(value))
                except ValueError:
                    continue
                rows.append((subject_id, kind, lookup_digest(lookup_key, kind, normalised)))
            keys.clear()
        if rows:
            self.keystore.replace_lookups(rows)
        log.info("lookups_reindexed", identifiers=len(rows))
        return len(rows)
