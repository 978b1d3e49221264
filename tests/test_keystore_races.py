"""The key store under concurrency and failure, on real SQLite and PostgreSQL.

Each test sets up the race or the failure it is about with real connections, threads or
processes: an erasure landing between a unit of work's events and its index rows, a
rewrap while another process makes its first receipt key, a PostgreSQL connection the
server terminates, a process killed between a shred and its compaction.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ledger.api.tokens import TokenStore
from ledger.audit.store import AuditStore
from ledger.clock import FixedClock
from ledger.config import DatabaseURL, Settings
from ledger.crypto.keystore import KeyStore, KeyStoreError
from ledger.crypto.lookup import lookup_digest, normalise_identifier
from ledger.crypto.master import decode_master_key
from ledger.facade import Ledger
from tests.conftest import MASTER_KEY, PG_URL

MASTER = decode_master_key(MASTER_KEY)
NEW_MASTER = bytes(range(100, 132))
SCOPE = "customer_data"
CA = "customer_administration"
ROOT = Path(__file__).resolve().parents[1]
EMAIL = b"\x01" * 32


def new_subject() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def store(settings: Settings) -> Iterator[KeyStore]:
    opened = KeyStore.open(settings.keystore, MASTER)
    yield opened
    opened.close()


def _lookup_rows(store: KeyStore, subject: str) -> int:
    rows = store._db.execute("SELECT COUNT(*) FROM ledger_lookup WHERE subject = ?", (subject,))
    return int(rows[0][0])


def _raw_connection(url: DatabaseURL) -> Any:
    """A connection of "another process", outside the key store's code."""
    if url.backend == "sqlite":
        assert url.sqlite_path is not None
        return sqlite3.connect(url.sqlite_path, isolation_level=None, check_same_thread=False)
    conn = psycopg.connect(url.conninfo(), autocommit=True)
    conn.execute(f'SET search_path TO "{url.schema}"')
    return conn


def _sql(url: DatabaseURL, sql: str) -> str:
    return sql if url.backend == "sqlite" else sql.replace("?", "%s")


class Worker(threading.Thread):
    """Runs `work` in a thread and keeps its result or exception."""

    def __init__(self, work: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as exc:
            self.error = exc


# -- F2: lookup rows exist only while the subject has a live customer_data key ----------


def test_index_rows_written_after_an_erasure_are_not_written(store: KeyStore) -> None:
    """Index rows come after the events: an erasure in between must not be undone."""
    erased, returning, keyless, other = (new_subject() for _ in range(4))
    doomed = store.ensure_key(erased, SCOPE)
    store.shred(returning, SCOPE, [store.ensure_key(returning, SCOPE).kid])
    store.ensure_key(returning, SCOPE)  # a returning customer: generation 2 is live
    store.ensure_key(keyless, "marketing")  # keys, but no customer_data key
    store.ensure_key(other, SCOPE)
    rows = [(s, "email", bytes([i]) * 32) for i, s in enumerate([erased, returning, keyless])]
    rows.append((other, "phone", b"\x09" * 32))
    store.replace_lookups(rows)
    assert [_lookup_rows(store, s) for s in (erased, returning, keyless, other)] == [1, 1, 0, 1]
    store.shred(erased, SCOPE, [doomed.kid])
    assert _lookup_rows(store, erased) == 0
    store.replace_lookups(rows)  # late: the erasure has returned
    store.replace_lookups(rows, new_subjects={erased, other})  # the COPY path too
    assert store.find("email", bytes([0]) * 32) == []
    assert [_lookup_rows(store, s) for s in (erased, returning, keyless, other)] == [0, 1, 0, 1]
    assert store.find("email", bytes([1]) * 32) == [returning]
    assert store.find("phone", b"\x09" * 32) == [other]


def test_a_ledger_write_whose_index_rows_come_after_an_erasure(
    settings: Settings, clock: FixedClock
) -> None:
    """Two processes: one saves a new e-mail and has yet to write its index row when the
    other erases the subject. The late row is not written, and `reindex` brings none back."""
    with (
        Ledger.open(settings, clock=clock) as writer,
        Ledger.open(settings, clock=clock) as eraser,
    ):
        subject = writer.execute(
            {
                "type": "register_subject",
                "kind": "customer",
                "purpose": CA,
                "legal_basis": "contract",
                "identifiers": {"email": "gammel@example.dk"},
            }
        )["subject"]
        digest = lookup_digest(
            writer.keystore.lookup_key(), "email", normalise_identifier("email", "ny@example.dk")
        )
        erased = eraser.execute({"type": "erase", "subject": subject})
        assert erased.get("ok") is True, erased
        writer.keystore.replace_lookups([(subject, "email", digest)])  # the writer's late row
        assert writer.find("email", "ny@example.dk") == []
        assert eraser.find("email", "ny@example.dk") == []
        writer.reindex_lookups()
        assert writer.find("email", "ny@example.dk") == []
        assert writer.find("email", "gammel@example.dk") == []
        assert _lookup_rows(writer.keystore, subject) == 0


def test_index_rows_wait_for_a_shredding_in_progress(settings: Settings, store: KeyStore) -> None:
    """Another process has destroyed the customer_data key and dropped the index rows, and
    not committed yet. Rows written meanwhile must wait for it and then see the key gone;
    without that they commit first and outlive the erasure."""
    url = settings.keystore
    subject = new_subject()
    key = store.ensure_key(subject, SCOPE)
    store.replace_lookups([(subject, "email", EMAIL)])
    shredder = _raw_connection(url)
    try:
        shredder.execute("BEGIN IMMEDIATE" if url.backend == "sqlite" else "BEGIN")
        # what `shred_many` does, in its order, in another process's transaction
        shredder.execute(
            _sql(url, "UPDATE ledger_keys SET wrapped = NULL, shredded_at = ? WHERE kid = ?"),
            ("2026-03-02T10:00:00+00:00", key.kid),
        )
        shredder.execute(_sql(url, "DELETE FROM ledger_lookup WHERE subject = ?"), (subject,))
        writer = Worker(lambda: store.replace_lookups([(subject, "email", EMAIL)]))
        writer.start()
        writer.join(1.0)
        assert writer.is_alive(), "the index write did not wait for the shredding"
        shredder.execute("COMMIT")
        writer.join(30)
        assert not writer.is_alive() and writer.error is None, writer.error
    finally:
        shredder.close()
    assert store.find("email", EMAIL) == []
    assert _lookup_rows(store, subject) == 0


def test_a_shredding_waits_for_index_rows_in_progress(settings: Settings, store: KeyStore) -> None:
    """The other order: while a unit of work writes index rows (many subjects, one
    transaction), another process's shredding of one of them waits for it and then drops
    the rows (or, if it came first, the rows are not written)."""
    subjects = [new_subject() for _ in range(3000)]
    for start in range(0, len(subjects), 500):
        session = store.session(subjects[start : start + 500])
        for subject in subjects[start : start + 500]:
            session.key_for_sealing(subject, SCOPE)
        session.commit()
    doomed = subjects[-1]
    other = KeyStore.open(settings.keystore, MASTER)
    try:
        rows = [(s, "email", uuid.UUID(s).bytes * 2) for s in subjects]
        for _ in range(3):
            key = store.ensure_key(doomed, SCOPE)  # a live key each round (a new generation)
            writer = Worker(lambda: store.replace_lookups(rows))
            writer.start()
            time.sleep(0.05)
            assert other.shred(doomed, SCOPE, [key.kid]) == [key.kid]
            writer.join(60)
            assert writer.error is None, writer.error
            assert _lookup_rows(store, doomed) == 0
            assert store.find("email", uuid.UUID(doomed).bytes * 2) == []
        assert _lookup_rows(store, subjects[0]) == 1
    finally:
        other.close()


def test_index_rows_and_a_shredding_of_the_same_subjects_do_not_deadlock(
    settings: Settings, store: KeyStore
) -> None:
    """An erasure of many subjects (a sweep) and a unit of work's index rows for the same
    subjects, at the same time, in two processes. Each takes the same key rows; taken in
    different orders they deadlocked on PostgreSQL in about one round in four, and the
    server failed one of them (the index rows were then missing until a reindex)."""
    other = KeyStore.open(settings.keystore, MASTER)
    try:
        for _ in range(12):
            subjects = [new_subject() for _ in range(300)]
            session = store.session(subjects)
            kids = {s: session.key_for_sealing(s, SCOPE).kid for s in subjects}
            session.commit()
            session.forget()
            rows = [(s, "email", uuid.UUID(s).bytes * 2) for s in subjects]
            writer = Worker(lambda rows=rows: store.replace_lookups(rows))
            shredder = Worker(
                lambda subjects=subjects, kids=kids: other.shred_many(
                    [(s, SCOPE, [kids[s]]) for s in reversed(subjects)], compact=False
                )
            )
            writer.start()
            shredder.start()
            writer.join(60)
            shredder.join(60)
            assert writer.error is None, writer.error
            assert shredder.error is None, shredder.error
            assert sorted(shredder.result) == sorted(kids.values())
            # whichever came first, no subject keeps index rows after its erasure
            assert all(store.find("email", uuid.UUID(s).bytes * 2) == [] for s in subjects[:5])
    finally:
        other.close()


# -- F5: a rewrap and the first use of a secret -----------------------------------------


@pytest.mark.parametrize("secret", ["receipt", "lookup"])
def test_a_secret_made_during_a_rewrap_waits_and_is_refused(
    settings: Settings, secret: str
) -> None:
    """A process with the old master key makes its first receipt key (or the lookup key)
    while a rewrap runs: it waits for the rewrap, then refuses (the master key changed)
    rather than leave a secret wrapped under a key nobody will hold."""
    url = settings.keystore
    rewrapper = KeyStore.open(url, MASTER)
    old = KeyStore.open(url, MASTER)  # e.g. a server started before the rotation
    inside, release = threading.Event(), threading.Event()

    def keep_new_key() -> None:  # where the CLI writes the new key file
        inside.set()
        release.wait(30)

    try:
        rewrap = Worker(lambda: rewrapper.rewrap(NEW_MASTER, before_commit=keep_new_key))
        rewrap.start()
        assert inside.wait(30)
        make = old.receipt_key if secret == "receipt" else (lambda _week: old.lookup_key())
        first_use = Worker(lambda: make("2026-W10"))
        first_use.start()
        first_use.join(1.0)
        assert first_use.is_alive(), "the secret was made inside the rewrap's window"
        release.set()
        rewrap.join(30)
        first_use.join(30)
        assert rewrap.error is None, rewrap.error
        assert isinstance(first_use.error, KeyStoreError), first_use.result
        assert "rotated" in str(first_use.error)
    finally:
        release.set()
        rewrapper.close()
        old.close()
    rotated = KeyStore.open(url, NEW_MASTER)
    try:
        receipt = rotated.receipt_key("2026-W10")
        assert receipt is not None and len(receipt) == 32
        assert len(rotated.lookup_key()) == 32
    finally:
        rotated.close()


# -- F6: PostgreSQL connections the server closed ---------------------------------------


@pytest.fixture
def pg_url(pg_schema: str) -> DatabaseURL:
    return DatabaseURL.parse(f"{PG_URL}?schema={pg_schema}")


def _terminate(url: DatabaseURL, pid: int) -> None:
    with psycopg.connect(url.conninfo(), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        for _ in range(100):  # until the server has let it go
            gone = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            if gone.fetchone() == (0,):
                return
            time.sleep(0.02)


def _backend_pid(store: KeyStore) -> int:
    return int(store._db.conn.info.backend_pid)


def test_the_postgres_key_store_reconnects_after_its_connection_is_terminated(
    pg_url: DatabaseURL,
) -> None:
    """A server restart or `pg_terminate_backend`: the next statement runs on a new
    connection in the same schema, whether it is a read or opens a write."""
    store = KeyStore.open(pg_url, MASTER)
    try:
        subject = new_subject()
        key = store.ensure_key(subject, SCOPE)
        store.replace_lookups([(subject, "email", EMAIL)])
        operations: list[Callable[[], Any]] = [
            lambda: store.find("email", EMAIL) == [subject],  # a read
            lambda: store.ensure_key(subject, "marketing").generation == 1,  # a write
            lambda: store.receipt_key("2026-W10") is not None,  # a secret, made
            lambda: store.key(subject, SCOPE, key.kid) == key.key,
            lambda: store.shred(subject, "marketing", [store.records(subject)[-1].kid]) != [],
        ]
        for operation in operations:
            pid = _backend_pid(store)
            _terminate(pg_url, pid)
            assert operation() is True
            assert _backend_pid(store) != pid
        session = store.session([subject, new_subject()])
        _terminate(pg_url, _backend_pid(store))
        session.renew(subject, SCOPE)
        session.commit()  # writes on the new connection
        assert sorted(r.generation for r in store.records(subject) if r.scope == SCOPE) == [1, 2]
    finally:
        store.close()


def test_a_terminated_connection_inside_a_transaction_fails_only_that_unit_of_work(
    pg_url: DatabaseURL,
) -> None:
    """The connection goes while a rewrap's transaction is open: the rewrap fails with the
    connection's error (rolling back does not fail in turn), nothing of it was kept, and
    the next call works on a new connection."""
    store = KeyStore.open(pg_url, MASTER)
    try:
        subject = new_subject()
        key = store.ensure_key(subject, SCOPE)
        pid = _backend_pid(store)
        with pytest.raises(psycopg.OperationalError):
            store.rewrap(NEW_MASTER, before_commit=lambda: _terminate(pg_url, pid))
        assert store.key(subject, SCOPE, key.kid) == key.key  # the old master key still opens
        assert _backend_pid(store) != pid
        assert store.ensure_key(new_subject(), SCOPE).generation == 1
    finally:
        store.close()
    with pytest.raises(KeyStoreError):
        KeyStore.open(pg_url, NEW_MASTER).close()  # the rewrap did not commit


def test_the_postgres_audit_store_reconnects(pg_url: DatabaseURL) -> None:
    store = AuditStore.open(pg_url)
    try:
        with store.writer() as s:
            s.set_meta("probe", "one")
        for _ in range(2):
            _terminate(pg_url, store.conn.info.backend_pid)
            with store.reader() as s:
                assert s.meta("probe") == "one"  # the search_path is set again
        pid = store.conn.info.backend_pid
        with pytest.raises(psycopg.OperationalError), store.writer() as s:
            s.set_meta("probe", "two")
            _terminate(pg_url, pid)
            s.set_meta("probe", "three")
        with store.writer() as s:
            assert s.meta("probe") == "one"
            s.set_meta("probe", "four")
        with store.reader() as s:
            assert s.meta("probe") == "four"
    finally:
        store.close()


def test_the_postgres_token_store_reconnects(pg_url: DatabaseURL) -> None:
    """The HTTP service's tokens: a read (`authenticate`) and a write (`create`,
    `revoke`) each work after the server closed the connection; a write whose connection
    goes inside its transaction fails and keeps nothing."""
    store = TokenStore(pg_url, cache_seconds=0)
    try:
        token, record = store.create("officer", "officer-one")
        pid = store.conn.info.backend_pid
        _terminate(pg_url, pid)
        assert store.authenticate(token) == record  # a read, on a new connection
        _terminate(pg_url, store.conn.info.backend_pid)
        second, _ = store.create("auditor", "auditor-one")  # a write, on a new one
        assert {t.name for t in store.all()} == {"officer-one", "auditor-one"}

        def revoke_on_a_dying_connection(cur: Any) -> Any:
            cur.execute(
                "UPDATE ledger_tokens SET revoked_at = ? WHERE name = ?", ("x", "auditor-one")
            )
            _terminate(pg_url, store.conn.info.backend_pid)
            return cur.execute("SELECT 1")

        with pytest.raises(psycopg.OperationalError):
            store._write(revoke_on_a_dying_connection)
        assert store.authenticate(second) is not None  # not revoked: nothing was kept
        assert [t.name for t in store.revoke("auditor-one")] == ["auditor-one"]
        assert store.authenticate(second) is None
    finally:
        store.close()


# -- F8: a crash between a shred and its compaction (SQLite) ----------------------------

CRASH_AFTER_SHRED = """
import os, signal, sys
from ledger.config import DatabaseURL
from ledger.crypto.keystore import KeyStore
from ledger.crypto.master import decode_master_key
store = KeyStore.open(DatabaseURL.parse(sys.argv[1]), decode_master_key(sys.argv[2]))
store.shred_many([(sys.argv[3], "customer_data", [sys.argv[4]])], compact=False)
os.kill(os.getpid(), signal.SIGKILL)  # committed, not yet compacted
"""


def test_a_shred_that_a_crash_kept_from_compaction_is_compacted_at_the_next_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "home" / "keys.db"
    url = DatabaseURL.parse(f"sqlite:///{path}")
    store = KeyStore.open(url, MASTER)
    subject = new_subject()
    key = store.ensure_key(subject, SCOPE)
    store.close()  # the last connection's close moves the WAL into keys.db
    wrapped = _wrapped_bytes(path, key.kid)
    assert wrapped in path.read_bytes()
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASH_AFTER_SHRED,
            f"sqlite:///{path}",
            MASTER_KEY,
            subject,
            key.kid,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert wrapped in path.read_bytes()  # the old page: the new one is in the WAL
    reopened = KeyStore.open(url, MASTER)
    try:
        for name in ("keys.db", "keys.db-wal"):
            candidate = path.with_name(name)
            assert not candidate.exists() or wrapped not in candidate.read_bytes(), name
        (record,) = reopened.records(subject)
        assert record.shredded_at is not None
    finally:
        reopened.close()


def _wrapped_bytes(path: Path, kid: str) -> bytes:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT wrapped FROM ledger_keys WHERE kid = ?", (kid,)).fetchone()
    finally:
        conn.close()
    assert row is not None and row[0] is not None
    return bytes(row[0])


def test_opening_does_not_wait_long_for_a_reader(tmp_path: Path) -> None:
    """The checkpoint at open waits at most a second for a connection holding an old
    snapshot (and so does the schema's commit after it); a later commit truncates once
    that reader has gone."""
    path = tmp_path / "home" / "keys.db"
    url = DatabaseURL.parse(f"sqlite:///{path}")
    first = KeyStore.open(url, MASTER)
    try:
        subject = new_subject()
        key = first.ensure_key(subject, SCOPE)
        wrapped = _wrapped_bytes(path, key.kid)
        reader = sqlite3.connect(path)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM ledger_keys").fetchone()
        first.shred_many([(subject, SCOPE, [key.kid])], compact=False)
        started = time.monotonic()
        second = KeyStore.open(url, MASTER)
        assert time.monotonic() - started < 5
        reader.rollback()
        reader.close()
        second.ensure_key(new_subject(), SCOPE)
        for name in ("keys.db", "keys.db-wal"):
            candidate = path.with_name(name)
            assert not candidate.exists() or wrapped not in candidate.read_bytes(), name
        second.close()
    finally:
        first.close()
    assert os.stat(path).st_mode & 0o077 == 0
