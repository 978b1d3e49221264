"""The key store (DESIGN 4.2–4.4) on SQLite and PostgreSQL: shredding is final for everyone.

No mocks: every test opens the real key store of the backend the `settings` fixture picks.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ledger.clock import FixedClock
from ledger.config import DatabaseURL, Settings
from ledger.crypto.keystore import KeyConflict, KeyStore, KeyStoreError
from ledger.crypto.master import decode_master_key
from ledger.crypto.sealing import SealError, seal, unseal
from ledger.facade import Ledger
from tests.conftest import MASTER_KEY, PG_URL

MASTER = decode_master_key(MASTER_KEY)
NEW_MASTER = bytes(range(100, 132))
SCOPE = "customer_data"
CA = "customer_administration"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(settings: Settings) -> Iterator[KeyStore]:
    opened = KeyStore.open(settings.keystore, MASTER)
    yield opened
    opened.close()


def new_subject() -> str:
    return str(uuid.uuid4())


def sealed_name(key: bytes, subject: str, kid: str, value: str = "Søren Ærø") -> Any:
    return seal(key, subject=subject, scope=SCOPE, kid=kid, category="name", value=value)


# -- shredding is final, for every process ------------------------------------------


def test_shred_reaches_another_store_that_opened_the_key_before(
    settings: Settings, store: KeyStore
) -> None:
    other = KeyStore.open(settings.keystore, MASTER)
    try:
        subject = new_subject()
        key = store.ensure_key(subject, SCOPE)
        box = sealed_name(key.key, subject, key.kid)
        # the other instance opens it (and so would have cached it, were there a cache)
        assert other.key(subject, SCOPE, key.kid) == key.key
        assert other.active_key(subject, SCOPE) == key
        assert other.keys(subject) == {key.kid: key.key}
        assert unseal(other.keys(subject)[key.kid], box, subject=subject, category="name")
        assert store.shred(subject, SCOPE, [key.kid]) == [key.kid]
        for instance in (store, other):
            assert instance.key(subject, SCOPE, key.kid) is None
            assert instance.active_key(subject, SCOPE) is None
            assert instance.keys(subject) == {}
            assert key.kid not in instance.live_kids()
        assert store.shred(subject, SCOPE, [key.kid]) == []  # idempotent
        (record,) = other.records(subject)
        assert record.kid == key.kid
        assert record.shredded_at is not None
        # a key session of the other instance never hands out the shredded key
        fresh = other.session([subject]).key_for_sealing(subject, SCOPE)
        assert fresh.kid != key.kid
        assert fresh.generation == 2
    finally:
        other.close()


CHILD = """
import json, sys
from ledger.config import DatabaseURL, Settings
from ledger.facade import Ledger

with Ledger.open(Settings.from_env()) as ledger:
    print("ready", flush=True)
    for line in sys.stdin:
        what, *args = line.split()
        if what == "key":
            subject, scope, kid = args
            key = ledger.keystore.key(subject, scope, kid)
            print(key.hex() if key else "none", flush=True)
        elif what == "reveal":
            view = ledger.subject(args[0], reveal=True, purpose="test", actor="child")
            print(json.dumps({d["category"]: d["value"] for d in view["data"]}), flush=True)
"""


def test_shred_reaches_another_process_that_opened_the_key_before(
    cli_env: dict[str, str], settings: Settings, clock: FixedClock
) -> None:
    with Ledger.open(settings, clock=clock) as ledger:
        subject = ledger.execute(
            {
                "type": "register_subject",
                "kind": "customer",
                "purpose": CA,
                "legal_basis": "contract",
                "identifiers": {"email": "søren@example.dk"},
            }
        )["subject"]
        kid = ledger.keystore.records(subject)[0].kid
        key = ledger.keystore.key(subject, SCOPE, kid)
        assert key is not None
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env,
            cwd=ROOT,
        )
        assert child.stdin is not None and child.stdout is not None
        try:

            def ask(line: str) -> str:
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write(line + "\n")
                child.stdin.flush()
                return child.stdout.readline().strip()

            assert child.stdout.readline().strip() == "ready"
            assert ask(f"key {subject} {SCOPE} {kid}") == key.hex()
            assert json.loads(ask(f"reveal {subject}")) == {"email": "søren@example.dk"}
            result = ledger.execute({"type": "erase", "subject": subject})
            assert result["shredded"] == [SCOPE]
            assert ask(f"key {subject} {SCOPE} {kid}") == "none"
            assert json.loads(ask(f"reveal {subject}")) == {"email": None}
        finally:
            child.stdin.close()
            child.wait(timeout=30)
            assert child.returncode == 0, child.stderr.read() if child.stderr else ""


# -- generations -----------------------------------------------------------------------


def test_new_generation_after_shredding_cannot_open_old_data(store: KeyStore) -> None:
    subject = new_subject()
    first = store.ensure_key(subject, SCOPE)
    old = sealed_name(first.key, subject, first.kid)
    store.shred(subject, SCOPE, [first.kid])
    second = store.ensure_key(subject, SCOPE)
    assert second.generation == first.generation + 1
    assert second.kid != first.kid
    assert second.key != first.key
    with pytest.raises(SealError):
        unseal(second.key, old, subject=subject, category="name")
    # not even when the old ciphertext is relabelled with the new kid
    relabelled = type(old)(scope=old.scope, kid=second.kid, ct=old.ct, commit=old.commit)
    with pytest.raises(SealError):
        unseal(second.key, relabelled, subject=subject, category="name")
    assert store.key(subject, SCOPE, first.kid) is None
    new = sealed_name(second.key, subject, second.kid, "Søren Ærø igen")
    assert unseal(second.key, new, subject=subject, category="name") == "Søren Ærø igen"


def test_generations_are_never_reused(settings: Settings, store: KeyStore) -> None:
    subject = new_subject()
    seen = []
    for _ in range(3):
        key = store.ensure_key(subject, SCOPE)
        assert store.ensure_key(subject, SCOPE) == key  # the live one, not a new one
        seen.append((key.generation, key.kid))
        store.shred(subject, SCOPE, [key.kid])
    assert [g for g, _ in seen] == [1, 2, 3]
    assert len({k for _, k in seen}) == 3
    # after reopening, and through a key session, the next one is 4
    store.close()
    reopened = KeyStore.open(settings.keystore, MASTER)
    try:
        nxt = reopened.session([subject]).key_for_sealing(subject, SCOPE)
        assert nxt.generation == 4
        assert nxt.kid not in {k for _, k in seen}
        assert reopened.ensure_key(subject, SCOPE).generation == 4
        records = sorted(reopened.records(subject), key=lambda r: r.generation)
        assert [r.generation for r in records] == [1, 2, 3, 4]
        assert [r.shredded_at is not None for r in records] == [True, True, True, False]
        # scopes and subjects count generations apart
        assert reopened.ensure_key(subject, "marketing").generation == 1
        assert reopened.ensure_key(new_subject(), SCOPE).generation == 1
    finally:
        reopened.close()


def test_kids_follow_the_order_keys_were_made_in(store: KeyStore) -> None:
    """A kid starts with the time it was made (the kid index grows at its end) and ends
    in random bytes (keys made in the same millisecond, by any process, differ)."""
    made = []
    for _ in range(3):
        session = store.session(subjects := [new_subject() for _ in range(100)])
        made.extend(session.key_for_sealing(subject, SCOPE).kid for subject in subjects)
        store.write_keys(session.rows())
        time.sleep(0.002)
    assert all(len(kid) == 24 and int(kid, 16) >= 0 for kid in made)
    assert len(set(made)) == len(made)
    times = [kid[:12] for kid in made]
    assert times == sorted(times)
    assert abs(int(times[-1], 16) - time.time() * 1000) < 60_000  # milliseconds, now
    assert len({kid[12:] for kid in made}) == len(made)
    assert {r.kid for r in store.records()} >= set(made)


def test_returning_customer_gets_a_new_generation_through_the_ledger(
    ledger: Ledger, clock: FixedClock
) -> None:
    subject = ledger.execute(
        {
            "type": "register_subject",
            "kind": "prospect",
            "purpose": CA,
            "legal_basis": "legitimate_interest",
            "identifiers": {"email": "gammel@example.dk"},
        }
    )["subject"]
    (first,) = ledger.keystore.records(subject)
    swept = ledger.sweep(datetime(2026, 5, 2, 12, 0, tzinfo=UTC))  # 2 months after
    assert [(s["subject"], s["scope"]) for s in swept["shredded"]] == [(subject, SCOPE)]
    clock.set(datetime(2026, 5, 3, 9, 0, tzinfo=UTC))
    assert ledger.execute(
        {
            "type": "collect",
            "subject": subject,
            "category": "email",
            "value": "ny@example.dk",
            "purpose": CA,
            "legal_basis": "legitimate_interest",
            "source": "subject",
        }
    ) == {"ok": True}
    records = sorted(ledger.keystore.records(subject), key=lambda r: r.generation)
    assert [(r.generation, r.shredded_at is not None) for r in records] == [(1, True), (2, False)]
    assert records[1].kid != first.kid
    view = ledger.subject(subject, reveal=True, purpose="test")
    assert view["status"] == "partially_erased"
    assert [d["value"] for d in view["data"]] == ["ny@example.dk"]
    history = ledger.history(subject)
    kids = [e["sealed"]["kid"] for e in history if "sealed" in e]
    assert kids == [first.kid, records[1].kid]


def test_unit_of_work_never_seals_with_a_key_shredded_while_it_ran(
    settings: Settings, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key session read just before another process shreds the scope must not be used."""
    with (
        Ledger.open(settings, clock=clock) as writer,
        Ledger.open(settings, clock=clock) as sweeper,
    ):
        subject = writer.execute(
            {
                "type": "register_subject",
                "kind": "prospect",
                "purpose": CA,
                "legal_basis": "legitimate_interest",
                "identifiers": {"email": "før@example.dk"},
            }
        )["subject"]
        (old,) = writer.keystore.records(subject)
        clock.set(datetime(2026, 5, 3, 10, 0, tzinfo=UTC))  # past the 2-month deadline
        read_keys = writer.keystore.session
        swept: list[Any] = []

        def session_then_sweep(subjects: Any) -> Any:
            session = read_keys(subjects)  # the keys as they were...
            if not swept:  # ...then another process shreds the scope (once)
                swept.append(sweeper.sweep()["shredded"])
            return session

        monkeypatch.setattr(writer.keystore, "session", session_then_sweep)
        result = writer.execute(
            {
                "type": "collect",
                "subject": subject,
                "category": "name",
                "value": "Åse Ærø",
                "purpose": CA,
                "legal_basis": "legitimate_interest",
                "source": "subject",
            }
        )
        assert swept == [[{"subject": subject, "scope": SCOPE, "deadline": "2026-05-02"}]]
        assert result == {"ok": True}
        monkeypatch.undo()
        view = writer.subject(subject, reveal=True, purpose="test")
        assert {d["category"]: d["value"] for d in view["data"]} == {
            "email": None,
            "name": "Åse Ærø",
        }
        records = sorted(writer.keystore.records(subject), key=lambda r: r.generation)
        assert [(r.kid == old.kid, r.shredded_at is not None) for r in records] == [
            (True, True),
            (False, False),
        ]


def test_renew_makes_the_next_generation_for_a_scope_this_unit_of_work_shreds(
    store: KeyStore,
) -> None:
    """An erase followed in the same group by a collect into a scope the erase shreds: the
    collect seals under a new generation, never the key being destroyed."""
    subject = new_subject()
    first = store.ensure_key(subject, SCOPE)
    session = store.session([subject])
    assert session.key_for_sealing(subject, SCOPE) == first
    mark = session.checkpoint()
    renewed = session.renew(subject, SCOPE)
    assert (renewed.subject, renewed.scope, renewed.generation) == (subject, SCOPE, 2)
    assert renewed.kid != first.kid and renewed.key != first.key
    assert session.key_for_sealing(subject, SCOPE) == renewed  # later seals use it
    assert [k for k, _ in session.new_keys] == [renewed]
    assert session.checkpoint() == mark + 1
    session.commit()
    store.shred(subject, SCOPE, [first.kid])  # what the erase does after the events
    assert store.active_key(subject, SCOPE) == renewed  # wrapped like any key: it opens
    assert store.key(subject, SCOPE, renewed.kid) == renewed.key
    box = sealed_name(renewed.key, subject, renewed.kid)
    assert unseal(store.keys(subject)[renewed.kid], box, subject=subject, category="name")


def test_renew_counts_from_the_newest_generation_the_session_knows(store: KeyStore) -> None:
    subject, fresh = new_subject(), new_subject()
    for _ in range(2):  # generations 1 and 2 shredded, 3 live
        store.shred(subject, SCOPE, [store.ensure_key(subject, SCOPE).kid])
    live = store.ensure_key(subject, SCOPE)
    session = store.session([subject, fresh])
    assert session.renew(subject, SCOPE).generation == 4  # from the store, nothing open
    assert session.renew(subject, SCOPE).generation == 5  # from the open key
    made = session.key_for_sealing(fresh, SCOPE)  # a new key of this session...
    assert made.generation == 1
    assert session.renew(fresh, SCOPE).generation == 2  # ...is the current one
    assert session.renew(new_subject(), "marketing").generation == 1  # none at all
    session.commit()
    generations = sorted(r.generation for r in store.records(subject))
    assert generations == [1, 2, 3, 4, 5]
    assert sorted(r.generation for r in store.records(fresh)) == [1, 2]
    assert store.key(subject, SCOPE, live.kid) == live.key


def test_rollback_to_forgets_a_renewed_key(store: KeyStore) -> None:
    """A rejected command's renewal writes nothing, and the scope opens as it was before."""
    subject, fresh = new_subject(), new_subject()
    first = store.ensure_key(subject, SCOPE)
    session = store.session([subject, fresh])
    made = session.key_for_sealing(fresh, SCOPE)  # new in an earlier command
    mark = session.checkpoint()
    session.renew(subject, SCOPE)
    session.renew(fresh, SCOPE)
    session.renew(fresh, SCOPE)
    session.rollback_to(mark)
    assert [k for k, _ in session.new_keys] == [made]
    assert session.key_for_sealing(subject, SCOPE) == first  # the store's key again
    assert session.key_for_sealing(fresh, SCOPE) == made  # not a second generation 1
    again = session.renew(subject, SCOPE)
    assert again.generation == 2
    session.commit()  # no KeyConflict: every generation is written once
    assert sorted((r.generation, r.kid) for r in store.records(subject)) == [
        (1, first.kid),
        (2, again.kid),
    ]
    assert [r.kid for r in store.records(fresh)] == [made.kid]


# -- the master key --------------------------------------------------------------------


def test_wrong_master_key_is_refused(settings: Settings, store: KeyStore) -> None:
    store.ensure_key(new_subject(), SCOPE)
    with pytest.raises(KeyStoreError):
        KeyStore.open(settings.keystore, NEW_MASTER)
    with pytest.raises(KeyStoreError):
        KeyStore.open(settings.keystore, MASTER[:16])


def test_ledger_with_a_wrong_master_key_does_not_open(ledger_env: dict[str, str]) -> None:
    with Ledger.open(Settings.from_env(ledger_env)):
        pass
    other = {**ledger_env, "LEDGER_MASTER_KEY": "ZGlmZmVyZW50LW1hc3Rlci1rZXktMzItYnl0ZXMhISE="}
    with pytest.raises(KeyStoreError):
        Ledger.open(Settings.from_env(other))


def test_rewrap_keeps_keys_usable_and_retires_the_old_master(
    settings: Settings, store: KeyStore
) -> None:
    subject = new_subject()
    live = store.ensure_key(subject, SCOPE)
    marketing = store.ensure_key(subject, "marketing")
    gone = store.ensure_key(new_subject(), SCOPE)
    store.shred(gone.subject, SCOPE, [gone.kid])
    lookup_key = store.lookup_key()
    assert store.rewrap(NEW_MASTER) == 2
    assert store.key(subject, SCOPE, live.kid) == live.key  # usable at once
    store.close()
    with pytest.raises(KeyStoreError):
        KeyStore.open(settings.keystore, MASTER)
    reopened = KeyStore.open(settings.keystore, NEW_MASTER)
    try:
        assert reopened.key(subject, SCOPE, live.kid) == live.key
        assert reopened.key(subject, "marketing", marketing.kid) == marketing.key
        assert reopened.key(gone.subject, SCOPE, gone.kid) is None  # no resurrection
        assert reopened.lookup_key() == lookup_key
        with pytest.raises(KeyStoreError):
            reopened.rewrap(b"short")
    finally:
        reopened.close()


def test_rewrap_through_the_ledger(ledger_env: dict[str, str], clock: FixedClock) -> None:
    settings = Settings.from_env(ledger_env)
    with Ledger.open(settings, clock=clock) as ledger:
        subject = ledger.execute(
            {
                "type": "register_subject",
                "kind": "customer",
                "purpose": CA,
                "legal_basis": "contract",
                "identifiers": {"phone": "+45 20 30 40 50"},
            }
        )["subject"]
        ledger.keystore.rewrap(NEW_MASTER)
    new_text = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM="
    assert decode_master_key(new_text) == NEW_MASTER
    with Ledger.open(Settings.from_env({**ledger_env, "LEDGER_MASTER_KEY": new_text})) as ledger:
        view = ledger.subject(subject, reveal=True, purpose="test")
        assert [d["value"] for d in view["data"]] == ["+45 20 30 40 50"]
        assert ledger.find("phone", "20304050") == [subject]
    with pytest.raises(KeyStoreError):
        Ledger.open(settings)


# -- the lookup index ------------------------------------------------------------------


def test_lookup_rows_go_with_the_customer_data_key(ledger: Ledger) -> None:
    identifiers = {
        "cpr": "070761-4285",
        "email": "Søren.Ærø@Example.dk",
        "phone": "+45 20 30 40 50",
        "customer_number": "K-1001",
        "cvr": "34046352",
    }
    subject = ledger.execute(
        {
            "type": "register_subject",
            "kind": "customer",
            "purpose": CA,
            "legal_basis": "contract",
            "identifiers": identifiers,
            "cpr_ground": "identification",
        }
    )["subject"]
    other = ledger.execute(
        {
            "type": "register_subject",
            "kind": "customer",
            "purpose": CA,
            "legal_basis": "contract",
            "identifiers": {"email": "anden@example.dk"},
        }
    )["subject"]
    probes = {
        "cpr": "0707614285",
        "email": "  søren.ærø@example.DK ",
        "phone": "20304050",
        "customer_number": "K-1001",
        "cvr": "34 04 63 52",
    }
    for kind, probe in probes.items():
        assert ledger.find(kind, probe) == [subject], kind
    ledger.execute({"type": "erase", "subject": subject})
    for kind, probe in probes.items():
        assert ledger.find(kind, probe) == [], kind
    # unfiltered: the index rows themselves are gone
    for kind in probes:
        assert _lookup_rows(ledger, subject, kind) == 0
    assert ledger.find("email", "anden@example.dk") == [other]


def test_lookup_rows_stay_when_another_scope_is_shredded(store: KeyStore) -> None:
    subject = new_subject()
    customer = store.ensure_key(subject, SCOPE)
    store.replace_lookups([(subject, "email", b"\x01" * 32)])
    marketing = store.ensure_key(subject, "marketing")
    store.shred(subject, "marketing", [marketing.kid])
    assert store.find("email", b"\x01" * 32) == [subject]
    store.shred(subject, SCOPE, [customer.kid])
    assert store.find("email", b"\x01" * 32) == []


def test_lookups_of_a_new_subject_that_are_there_already_do_not_fail(store: KeyStore) -> None:
    """New subjects' rows go in by plain inserts (COPY on PostgreSQL). Should one be there
    already (it should not: rows follow the subject's first event), the store falls back
    to delete-and-insert for the whole group instead of failing after the events were
    written."""
    subject, other = new_subject(), new_subject()
    store.ensure_key(subject, SCOPE)
    store.ensure_key(other, SCOPE)
    store.replace_lookups(
        [(subject, "email", b"\x01" * 32), (subject, "phone", b"\x02" * 32)],
        new_subjects={subject},
    )
    assert store.find("email", b"\x01" * 32) == [subject]
    store.replace_lookups(
        [
            (subject, "email", b"\x01" * 32),
            (subject, "phone", b"\x05" * 32),
            (other, "email", b"\x04" * 32),
        ],
        new_subjects={subject, other},
    )
    assert store.find("email", b"\x01" * 32) == [subject]
    assert store.find("phone", b"\x02" * 32) == []
    assert store.find("phone", b"\x05" * 32) == [subject]
    assert store.find("email", b"\x04" * 32) == [other]
    count = store._db.execute("SELECT COUNT(*) FROM ledger_lookup WHERE subject = ?", (subject,))
    assert count[0][0] == 2


def test_a_key_generation_written_twice_is_a_conflict(store: KeyStore) -> None:
    """Two writers creating the same generation: the second is told, and writes nothing."""
    subject = new_subject()
    first = store.session([subject])
    second = store.session([subject])
    kept = first.key_for_sealing(subject, SCOPE)
    lost = second.key_for_sealing(subject, "marketing"), second.key_for_sealing(subject, SCOPE)
    first.commit()
    with pytest.raises(KeyConflict):
        second.commit()
    assert [r.kid for r in store.records(subject)] == [kept.kid]
    assert lost[1].kid != kept.kid


def _lookup_rows(ledger: Ledger, subject: str, kind: str) -> int:
    rows = ledger.keystore._db.execute(
        "SELECT COUNT(*) FROM ledger_lookup WHERE subject = ? AND kind = ?", (subject, kind)
    )
    return int(rows[0][0])


# -- secure deletion on SQLite ---------------------------------------------------------


def _wrapped(path: Path, kid: str) -> bytes:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT wrapped FROM ledger_keys WHERE kid = ?", (kid,)).fetchone()
    conn.close()
    assert row is not None and row[0] is not None
    return bytes(row[0])


def _raw_files(path: Path) -> dict[str, bytes]:
    found = {}
    for suffix in ("", "-wal", "-shm", "-journal"):
        candidate = Path(f"{path}{suffix}")
        if candidate.exists():
            found[candidate.name] = candidate.read_bytes()
    return found


def _traces(files: dict[str, bytes], secret: bytes) -> list[str]:
    """Files holding the secret, or any 16-byte window of it."""
    windows = {secret[i : i + 16] for i in range(0, len(secret) - 15)}
    return [
        name
        for name, data in files.items()
        if secret in data or any(window in data for window in windows)
    ]


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {"LEDGER_HOME": str(tmp_path / "home"), "LEDGER_MASTER_KEY": MASTER_KEY}
    )


def test_sqlite_key_files_forget_the_wrapped_key(sqlite_settings: Settings) -> None:
    path = sqlite_settings.keystore.sqlite_path
    assert path is not None and path.name == "keys.db"
    store = KeyStore.open(sqlite_settings.keystore, MASTER)
    try:
        subject, keeper = new_subject(), new_subject()
        doomed = store.ensure_key(subject, SCOPE)
        kept = store.ensure_key(keeper, SCOPE)
        doomed_bytes, kept_bytes = _wrapped(path, doomed.kid), _wrapped(path, kept.kid)
        assert _traces(_raw_files(path), doomed_bytes)  # the scan sees it while it lives
        store.shred(subject, SCOPE, [doomed.kid])
        files = _raw_files(path)
        assert "keys.db" in files
        assert _traces(files, doomed_bytes) == []
        assert _traces(files, kept_bytes)  # the other key is still there
        (record,) = store.records(subject)
        assert record.shredded_at is not None
    finally:
        store.close()
    assert _traces(_raw_files(path), doomed_bytes) == []


def test_sqlite_key_files_forget_keys_erased_through_the_ledger(
    sqlite_settings: Settings, clock: FixedClock
) -> None:
    path = sqlite_settings.keystore.sqlite_path
    assert path is not None
    with Ledger.open(sqlite_settings, clock=clock) as ledger:
        subject = ledger.execute(
            {
                "type": "register_subject",
                "kind": "customer",
                "purpose": CA,
                "legal_basis": "contract",
                "identifiers": {"email": "væk@example.dk"},
            }
        )["subject"]
        (record,) = ledger.keystore.records(subject)
        wrapped = _wrapped(path, record.kid)
        for _ in range(20):  # more traffic in the WAL
            ledger.execute({"type": "record_dialogue", "subject": subject})
        assert _traces(_raw_files(path), wrapped)
        ledger.execute({"type": "erase", "subject": subject})
        assert _traces(_raw_files(path), wrapped) == []
    assert _traces(_raw_files(path), wrapped) == []
    assert os.stat(path).st_mode & 0o077 == 0


# -- deletion on PostgreSQL: vacuumed heap pages no longer hold the key ---------------


def test_postgres_key_pages_forget_the_wrapped_key(pg_schema: str) -> None:
    url = DatabaseURL.parse(f"{PG_URL}?schema={pg_schema}")
    store = KeyStore.open(url, MASTER)
    try:
        with psycopg.connect(url.conninfo(), autocommit=True) as conn:
            inspect = _pageinspect(conn, pg_schema)
            keys = [store.ensure_key(new_subject(), SCOPE) for _ in range(12)]
            wrapped = {
                k.kid: bytes(
                    conn.execute(
                        f'SELECT wrapped FROM "{pg_schema}".ledger_keys WHERE kid = %s', (k.kid,)
                    ).fetchone()[0]  # type: ignore[index]
                )
                for k in keys
            }

            def pages() -> bytes:
                size = conn.execute(
                    "SELECT pg_relation_size(%s) / 8192", (f'"{pg_schema}".ledger_keys',)
                ).fetchone()
                assert size is not None
                return b"".join(
                    bytes(
                        conn.execute(  # type: ignore[index]
                            f'SELECT "{inspect}".get_raw_page(%s, %s)',
                            (f'"{pg_schema}".ledger_keys', block),
                        ).fetchone()[0]
                    )
                    for block in range(int(size[0]))
                )

            assert all(w in pages() for w in wrapped.values())
            for key in keys[::3]:
                store.shred(key.subject, SCOPE, [key.kid])
            store.shred_many([(k.subject, SCOPE, [k.kid]) for k in keys[1::3]])
            # VACUUM removes a dead row only when no older transaction anywhere in the
            # cluster can still see it: on a busy server the bytes may outlive the shred
            # until the next compaction (the sweeper compacts after shredding).
            for _ in range(50):
                raw = pages()
                if not any(wrapped[k.kid] in raw for i, k in enumerate(keys) if i % 3 != 2):
                    break
                time.sleep(0.1)
                store.compact()
            for index, key in enumerate(keys):
                assert (wrapped[key.kid] in raw) is (index % 3 == 2), index
    finally:
        store.close()


def _pageinspect(conn: psycopg.Connection[Any], schema: str) -> str:
    """The schema holding pageinspect (created in the test's schema if missing).

    Without it the test skips with the reason, except under `CI=true`, where that is a
    failure (as `require_postgres` does): CI must not pass without reading the pages.
    """
    try:
        conn.execute(f'CREATE EXTENSION IF NOT EXISTS pageinspect SCHEMA "{schema}"')
    except psycopg.Error as exc:
        reason = f"pageinspect is not available: {exc}".splitlines()[0]
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs pageinspect (postgresql-contrib): {reason}")
        pytest.skip(reason)
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pageinspect'"
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_a_reader_holding_an_old_snapshot_only_delays_the_wal_truncation(
    sqlite_settings: Settings,
) -> None:
    """A shred's checkpoint cannot empty the WAL while another connection reads an old
    snapshot; the store then tries again at its next commit (it once left the destroyed
    key in keys.db-wal until the process closed)."""
    path = sqlite_settings.keystore.sqlite_path
    assert path is not None
    store = KeyStore.open(sqlite_settings.keystore, MASTER)
    try:
        subject = new_subject()
        doomed = store.ensure_key(subject, SCOPE)
        doomed_bytes = _wrapped(path, doomed.kid)
        reader = sqlite3.connect(path)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM ledger_keys").fetchone()  # holds a snapshot
        store.shred(subject, SCOPE, [doomed.kid])
        assert _traces(_raw_files(path), doomed_bytes) == ["keys.db-wal"]  # it has to wait
        reader.rollback()
        reader.close()
        store.ensure_key(new_subject(), SCOPE)  # any later commit finishes the job
        assert _traces(_raw_files(path), doomed_bytes) == []
    finally:
        store.close()


def test_sqlite_key_files_forget_an_erased_subjects_index_rows(sqlite_settings: Settings) -> None:
    """Index rows of an erased subject removed other than by the shredding itself (by
    `reindex`, or by a late index write that finds the key gone) leave no digest in the
    files either: the write-ahead log, which may grow to 40 MB, is emptied at once."""
    path = sqlite_settings.keystore.sqlite_path
    assert path is not None
    store = KeyStore.open(sqlite_settings.keystore, MASTER)
    try:
        late, reindexed = new_subject(), new_subject()
        digests = {late: os.urandom(32), reindexed: os.urandom(32)}
        for subject, digest in digests.items():
            store.ensure_key(subject, SCOPE)
            store.replace_lookups([(subject, "email", digest)])
        assert all(_traces(_raw_files(path), d) for d in digests.values())
        # another process destroys the keys, and crashes before it removes the rows
        with sqlite3.connect(path, isolation_level=None) as other:
            other.execute("UPDATE ledger_keys SET wrapped = NULL, shredded_at = 'x'")
        other.close()
        store.compact()
        store.replace_lookups([(late, "email", digests[late])])  # finds the key gone
        assert _traces(_raw_files(path), digests[late]) == []
        store.remove_lookups(reindexed)  # what `reindex` does for an erased subject
        assert _traces(_raw_files(path), digests[reindexed]) == []
        assert store.find("email", digests[reindexed]) == []
    finally:
        store.close()
