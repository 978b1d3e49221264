"""The Merkle log on a real ledger (SQLite and PostgreSQL): sealing, checkpoints, proofs,
erasure, backups, concurrent sealers, and the functions front ends call."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import orjson
import psycopg
import pytest

from ledger.audit import service
from ledger.audit.keys import SigningKeyError
from ledger.audit.leaves import leaf_data, reduce_sealed
from ledger.audit.log import AuditLog
from ledger.audit.merkle import (
    verify_consistency,
    verify_inclusion,
)
from ledger.audit.merkle_reference import reference_root
from ledger.audit.note import open_checkpoint
from ledger.audit.store import AuditError, AuditStore
from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.errors import LedgerError
from ledger.facade import Ledger
from tests.audit_support import PLAINTEXTS, Raw, audit, story
from tests.conftest import PG_URL


def _leaves(ledger: Ledger) -> list[bytes]:
    return [
        leaf_data(n.id, n.originator_id, n.originator_version, n.topic, n.state)
        for n in ledger.notifications()
    ]


def test_reduce_sealed_is_generic() -> None:
    sealed = {"scope": "s", "kid": "k", "ct": "c", "commit": "x"}
    value = {"a": sealed, "b": [sealed, {"scope": "s", "kid": "k", "ct": "c"}], "c": 1}
    assert reduce_sealed(value) == {
        "a": {"scope": "s", "kid": "k", "commit": "x"},
        "b": [{"scope": "s", "kid": "k", "commit": "x"}, {"scope": "s", "kid": "k", "ct": "c"}],
        "c": 1,
    }


def test_leaf_data_is_canonical_and_holds_no_ciphertext() -> None:
    oid = uuid.UUID("5f1d2c3b-8a4e-4c21-9b7d-2f6e1a0c9d11")
    state = orjson.dumps(
        {"z": 1, "value": {"ct": "CIPHER", "commit": "ab", "kid": "k1", "scope": "marketing"}}
    )
    data = leaf_data(7, oid.hex, 2, "t:T", state)
    assert data == (
        b'{"id":7,"originator_id":"5f1d2c3b-8a4e-4c21-9b7d-2f6e1a0c9d11","originator_version":2,'
        b'"state":{"value":{"commit":"ab","kid":"k1","scope":"marketing"},"z":1},"topic":"t:T"}'
    )
    assert leaf_data(7, oid, 2, "t:T", state) == data  # UUID or stored hex: same leaf


def test_seal_commits_every_event_in_order(ledger: Ledger) -> None:
    story(ledger)
    result = service.seal(ledger)
    leaves = _leaves(ledger)
    assert result.added == len(leaves) == ledger.max_position()
    assert result.checkpoint is not None and result.tree_size == len(leaves)
    cp = open_checkpoint(result.checkpoint.note, audit(ledger).verifier)
    assert cp.size == len(leaves)
    assert cp.root == reference_root(leaves)
    # Nothing new: no new checkpoint.
    again = service.seal(ledger)
    assert again.added == 0 and again.checkpoint is None
    # Leaves hold commits, never ciphertext or plaintext.
    blob = b"\n".join(leaves)
    assert b'"ct"' not in blob
    for text in PLAINTEXTS:
        assert text.encode() not in blob


def test_sealing_in_chunks_gives_the_same_tree(ledger: Ledger) -> None:
    story(ledger, subjects=2)
    log = audit(ledger)
    result = log.seal(chunk=3)
    leaves = _leaves(ledger)
    assert result.tree_size == len(leaves)
    assert log.latest() is not None
    assert log.latest().root == reference_root(leaves)  # type: ignore[union-attr]
    assert service.verify(ledger).ok


def test_every_checkpoint_is_kept_and_consistent(ledger: Ledger) -> None:
    ids = story(ledger, subjects=1)
    service.seal(ledger)
    for n in range(3):
        before = ledger.max_position()
        assert ledger.execute({"type": "record_dialogue", "subject": ids[0]})["ok"]
        sealed = service.seal(ledger)
        assert sealed.added == ledger.max_position() - before == 1, n
        assert sealed.checkpoint is not None and sealed.tree_size == ledger.max_position()
    log = audit(ledger)
    with log.store.reader() as s:
        checkpoints = s.checkpoints()
    assert len(checkpoints) == 4
    sizes = [c.tree_size for c in checkpoints]
    assert sizes == sorted(sizes)
    for old in checkpoints[:-1]:
        p = service.prove_consistency(ledger, old.tree_size)
        proof = [base64.b64decode(x) for x in p["proof"]]
        verify_consistency(old.tree_size, sizes[-1], proof, old.root, checkpoints[-1].root)
    report = service.verify(ledger)
    assert report.ok, report.as_dict()
    assert report.checkpoints == 4 and report.events == sizes[-1]


def test_prove_subject_shows_versions_complete(ledger: Ledger) -> None:
    ids = story(ledger)
    service.seal(ledger)
    proof = service.prove_subject(ledger, ids[0])
    assert proof["complete"] and proof["contiguous"]
    versions = [e["version"] for e in proof["events"]]
    assert versions == list(range(1, len(versions) + 1))
    root = base64.b64decode(proof["checkpoint"]["root"])
    size = proof["checkpoint"]["tree_size"]
    for entry in proof["events"]:
        assert entry["verified"]
        verify_inclusion(
            entry["leaf_index"],
            size,
            base64.b64decode(entry["leaf_hash"]),
            [base64.b64decode(p) for p in entry["proof"]],
            root,
        )
    # A new, unsealed event shows as not yet included.
    ledger.execute({"type": "record_dialogue", "subject": ids[0]})
    pending = service.prove_subject(ledger, ids[0])
    assert not pending["complete"] and pending["unsealed"] == [len(versions) + 1]
    with pytest.raises(LedgerError) as error:
        service.prove_subject(ledger, str(uuid.uuid4()))
    assert error.value.code == "unknown_subject"


def test_erasure_leaves_every_proof_valid(ledger: Ledger) -> None:
    ids = story(ledger, subjects=1)
    service.seal(ledger)
    before = service.prove_subject(ledger, ids[0])
    leaves_before = _leaves(ledger)
    erased = ledger.execute({"type": "erase", "subject": ids[0]})
    assert erased["ok"] and erased["shredded"]
    assert not ledger.keystore.keys(ids[0])  # the keys are gone
    service.seal(ledger)
    # The old leaves are unchanged (no ciphertext in them), so old proofs still hold ...
    assert _leaves(ledger)[: len(leaves_before)] == leaves_before
    root = base64.b64decode(before["checkpoint"]["root"])
    for entry in before["events"]:
        verify_inclusion(
            entry["leaf_index"],
            before["checkpoint"]["tree_size"],
            base64.b64decode(entry["leaf_hash"]),
            [base64.b64decode(p) for p in entry["proof"]],
            root,
        )
    # ... and new proofs against the new checkpoint, and verify, hold too.
    after = service.prove_subject(ledger, ids[0])
    assert after["complete"] and after["versions"] > before["versions"]
    assert all(e["verified"] for e in after["events"])
    assert service.verify(ledger).ok


def test_service_functions_for_http(ledger: Ledger) -> None:
    empty = service.latest_checkpoint(ledger)
    assert empty["checkpoint"] is None and empty["tree_size"] == 0
    ids = story(ledger, subjects=1)
    service.seal(ledger)
    latest = service.latest_checkpoint(ledger)
    assert latest["tree_size"] == ledger.max_position()
    assert latest["checkpoint"].startswith("cekura.dk/personal-data-ledger\n")
    assert latest["public_key"] == service.public_key(ledger)
    by_subject = service.proof(ledger, subject=ids[0])
    assert by_subject["complete"]
    by_leaf = service.proof(ledger, leaf=0)
    assert by_leaf["verified"] and by_leaf["notification_id"] == 1
    by_event = service.prove_event(ledger, 2)
    assert by_event["verified"] and by_event["leaf_index"] == 1
    ledger.execute({"type": "record_dialogue", "subject": ids[0]})
    service.seal(ledger)
    consistency = service.proof(ledger, first=latest["tree_size"])
    assert consistency["size1"] == latest["tree_size"]
    for bad in ({}, {"subject": ids[0], "leaf": 1}, {"leaf": 10_000}, {"first": 3}):
        with pytest.raises(LedgerError) as error:
            service.proof(ledger, **bad)  # type: ignore[arg-type]
        assert error.value.code == "invalid_command"


def test_auto_sealer_seals_by_count_or_time(ledger: Ledger) -> None:
    ids = story(ledger, subjects=1)
    sealer = service.AutoSealer(interval=3600, batch=5)
    assert sealer.tick(ledger, written=1) is None
    result = sealer.tick(ledger, written=4)
    assert result is not None and result.tree_size == ledger.max_position()
    ledger.execute({"type": "record_dialogue", "subject": ids[0]})
    timed = service.AutoSealer(interval=0.0, batch=10**9)
    again = timed.tick(ledger)
    assert again is not None and again.added == 1


def test_concurrent_sealers_never_duplicate(ledger: Ledger, settings: Settings) -> None:
    story(ledger, subjects=3)
    table = getattr(ledger.app.recorder, "events_table_name", "stored_events")
    signer = audit(ledger).signer
    assert signer is not None
    logs = [
        AuditLog(AuditStore.open(settings.database, table), signer.verifier, signer=signer)
        for _ in range(3)
    ]
    errors: list[BaseException] = []

    def run(log: AuditLog) -> None:
        try:
            for _ in range(3):
                log.seal(chunk=4)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.store.close()
    assert not errors
    report = service.verify(ledger)
    assert report.ok, report.as_dict()
    assert report.leaves == ledger.max_position()


def test_sealer_refuses_to_extend_a_damaged_log(ledger: Ledger, settings: Settings) -> None:
    """The sealer reads the O(log n) nodes its consistency proof needs: damage to one of
    them (here the old tree's largest complete subtree) stops it; damage elsewhere is
    for `verify` to find."""
    ids = story(ledger, subjects=1)
    size = service.seal(ledger).tree_size
    raw = Raw(settings)
    try:
        raw.q(
            "UPDATE audit_tree SET hash = ? WHERE level = ? AND idx = 0",
            (bytes(32), size.bit_length() - 1),
        )
    finally:
        raw.close()
    ledger.execute({"type": "record_dialogue", "subject": ids[0]})
    with pytest.raises(AuditError, match="not consistent"):
        service.seal(ledger)
    # The CLI hook logs and warns instead of failing the write that already happened.
    service.seal_after_write(ledger)
    assert audit(ledger).latest().tree_size < ledger.max_position()  # type: ignore[union-attr]


def test_signing_key_must_not_change(ledger: Ledger, settings: Settings) -> None:
    story(ledger, subjects=1)
    service.seal(ledger)
    other = replace(settings, signing_key=base64.b64encode(bytes(32)).decode())
    with Ledger.open(other, clock=FixedClock(ledger.clock.now())) as second:
        second.execute({"type": "record_dialogue", "subject": str(uuid.UUID(int=0x5EED0000))})
        with pytest.raises(AuditError, match="another key"):
            service.seal(second)
        assert not service.verify(second).ok  # old checkpoints are not signed by this key


def _copy_postgres(source: str, target: str) -> None:
    conninfo = Settings.from_env({"LEDGER_DATABASE_URL": PG_URL}).database.conninfo()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{target}"')
        for table in ("ledger_events", "audit_tree", "audit_checkpoints", "audit_meta"):
            conn.execute(f'CREATE TABLE "{target}".{table} (LIKE "{source}".{table})')
            conn.execute(f'INSERT INTO "{target}".{table} SELECT * FROM "{source}".{table}')


def test_restored_backup_verifies(
    ledger: Ledger, settings: Settings, ledger_env: dict[str, str], tmp_path: Path
) -> None:
    story(ledger)
    service.seal(ledger)
    expected = service.latest_checkpoint(ledger)
    env = dict(ledger_env)
    env["LEDGER_HOME"] = str(tmp_path / "restored")
    public_key = service.public_key(ledger)
    if settings.database.backend == "sqlite":
        restored = tmp_path / "restored"
        restored.mkdir()
        assert settings.database.sqlite_path is not None
        # SQLite's online backup: a consistent copy of the live file, as a backup takes it.
        with sqlite3.connect(settings.database.sqlite_path) as src:
            dst = sqlite3.connect(restored / "ledger.db")
            src.backup(dst)
            dst.close()
    else:
        target = f"r_{uuid.uuid4().hex[:12]}"
        _copy_postgres(settings.database.schema, target)
        env["LEDGER_DATABASE_URL"] = f"{PG_URL}?schema={target}"
    try:
        with Ledger.open(Settings.from_env(env)) as copy:
            # no signing key with the copy: an auditor gives the public key; none is made
            with pytest.raises(SigningKeyError, match="--public-key"):
                service.verify(copy)
            report = service.verify(copy, key=public_key)
            assert report.ok, report.as_dict()
            assert not (tmp_path / "restored" / "signing.key").exists()
        env["LEDGER_SIGNING_KEY"] = settings.signing_key_file.read_text().strip()
        with Ledger.open(Settings.from_env(env)) as copy:
            report = service.verify(copy)
            assert report.ok, report.as_dict()
            assert service.latest_checkpoint(copy)["checkpoint"] == expected["checkpoint"]
    finally:
        if settings.database.backend == "postgres":
            with psycopg.connect(settings.database.conninfo(), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{target}" CASCADE')


def test_leaf_hash_matches_stored_level_zero(ledger: Ledger) -> None:
    story(ledger, subjects=1)
    service.seal(ledger)
    store = audit(ledger).store
    with store.reader() as s:
        stored = [h for _, h, _ in s.iter_level(0)]
    assert stored == [hashlib.sha256(b"\x00" + d).digest() for d in _leaves(ledger)]


def test_verify_of_a_log_never_sealed_says_so(ledger: Ledger, settings: Settings) -> None:
    """The Python API does not seal: before the first seal `verify` refuses with a clear
    answer (and makes no key); after `seal` the same log verifies."""
    story(ledger, subjects=1)
    events = ledger.max_position()
    with pytest.raises(AuditError, match="never sealed") as refused:
        service.verify(ledger)
    assert f"{events} events" in str(refused.value) and "ledger audit seal" in str(refused.value)
    assert not settings.signing_key_file.exists()
    service.seal(ledger)
    report = service.verify(ledger)
    assert report.ok, report.as_dict()
    assert report.leaves == events and report.checkpoints == 1


def test_an_empty_log_never_sealed_verifies(ledger: Ledger, settings: Settings) -> None:
    """Nothing to check is no failure; the signing key is made, as `audit checkpoint` and
    `audit public-key` make it on a fresh home."""
    report = service.verify(ledger)
    assert report.ok and report.events == 0 and report.checkpoints == 0
    assert report.public_key == service.public_key(ledger)
    assert settings.signing_key_file.exists()


def test_a_log_emptied_after_sealing_is_not_taken_for_never_sealed(ledger: Ledger) -> None:
    """Deleting the audit tables' rows leaves the witness: `verify` reports a failure
    instead of suggesting a fresh seal."""
    story(ledger, subjects=1)
    service.seal(ledger)
    store = audit(ledger).store
    with store.writer() as s:
        for table in ("audit_tree", "audit_checkpoints", "audit_meta"):
            s.execute(f"DELETE FROM {table}")
    report = service.verify(ledger)
    assert not report.ok
    assert [f.check for f in report.failures] == ["witness"], report.as_dict()
