"""Tampering behind the ledger's back (SQLite and PostgreSQL): `verify` fails and names the place.

Each test seals a story, then edits the database directly: an event's bytes, a deleted or
swapped event, a stored tree hash, a forged or re-signed checkpoint. The untouched ledger
verifies; every tampered one fails with the first bad leaf (notification id, subject,
version) or the checkpoint concerned.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import orjson
import pytest

from ledger.audit import service
from ledger.audit.leaves import leaf_data
from ledger.audit.merkle import append_leaves
from ledger.audit.note import Checkpoint, Signer, format_checkpoint, sign_note
from ledger.audit.store import AuditError, is_stored
from ledger.audit.verify import VerifyReport
from ledger.config import Settings
from ledger.facade import Ledger
from tests.audit_support import Raw, audit, story, subject_of


@pytest.fixture
def sealed(ledger: Ledger, settings: Settings) -> dict[str, Any]:
    ids = story(ledger, subjects=3)
    result = service.seal(ledger)
    report = service.verify(ledger)
    assert report.ok, report.as_dict()  # the untouched ledger verifies
    return {"ids": ids, "size": result.tree_size}


@pytest.fixture
def raw(settings: Settings) -> Any:
    handle = Raw(settings)
    yield handle
    handle.close()


def _failed(ledger: Ledger) -> VerifyReport:
    report = service.verify(ledger)
    assert not report.ok
    return report


def _checks(report: VerifyReport) -> set[str]:
    return {f.check for f in report.failures}


def test_flip_a_byte_of_an_event(ledger: Ledger, raw: Raw, sealed: dict[str, Any]) -> None:
    nid = 8
    oid, version, _, state = raw.event(nid)
    state = bytes(state)
    at = state.index(b'"occurred_at":"') + len(b'"occurred_at":"') + 3  # a digit of the year
    flipped = state[:at] + bytes([state[at] ^ 0x01]) + state[at + 1 :]
    raw.set_state(nid, flipped)
    report = _failed(ledger)
    first = report.first_bad_leaf
    assert first is not None
    assert (first.leaf_index, first.notification_id) == (nid - 1, nid)
    assert (first.subject, first.version) == (subject_of(oid), version)
    assert "leaf" in _checks(report) and "checkpoint" in _checks(report)


def test_flip_a_byte_that_breaks_the_json(ledger: Ledger, raw: Raw, sealed: dict[str, Any]) -> None:
    nid = 5
    _, _, _, state = raw.event(nid)
    state = bytes(state)
    raw.set_state(nid, bytes([state[0] ^ 0xFF]) + state[1:])
    report = _failed(ledger)
    first = report.first_bad_leaf
    assert first is not None and first.notification_id == nid


def test_delete_an_event(ledger: Ledger, raw: Raw, sealed: dict[str, Any]) -> None:
    nid = 4
    oid, version, _, _ = raw.event(nid)
    raw.q("DELETE FROM EVENTS WHERE NID = ?", (nid,))
    report = _failed(ledger)
    first = report.first_bad_leaf
    assert first is not None and first.leaf_index == nid - 1 and first.notification_id == nid
    gap = next(f for f in report.failures if f.check == "versions")
    assert (gap.subject, gap.version) == (subject_of(oid), version)


def test_delete_the_last_event(ledger: Ledger, raw: Raw, sealed: dict[str, Any]) -> None:
    last = sealed["size"]
    raw.q("DELETE FROM EVENTS WHERE NID = ?", (last,))
    report = _failed(ledger)
    first = report.first_bad_leaf
    assert first is not None and first.leaf_index == last - 1
    assert first.notification_id == last


def test_swap_two_events(ledger: Ledger, raw: Raw, sealed: dict[str, Any]) -> None:
    a, b = 6, 9
    _, _, topic_a, state_a = raw.event(a)
    _, _, topic_b, state_b = raw.event(b)
    raw.q("UPDATE EVENTS SET topic = ?, state = ? WHERE NID = ?", (topic_b, state_b, a))
    raw.q("UPDATE EVENTS SET topic = ?, state = ? WHERE NID = ?", (topic_a, state_a, b))
    report = _failed(ledger)
    first = report.first_bad_leaf
    assert first is not None and first.notification_id == a
    leaf = next(f for f in report.failures if f.check == "leaf")
    assert leaf.count == 2  # both swapped events are named (the first, and counted)


def test_change_a_stored_leaf_hash(ledger: Ledger, raw: Raw, sealed: dict[str, Any]) -> None:
    raw.q("UPDATE audit_tree SET hash = ? WHERE level = 0 AND idx = 10", (bytes(32),))
    report = _failed(ledger)
    first = report.first_bad_leaf
    assert first is not None and first.leaf_index == 10 and first.notification_id == 11
    # The events still give the signed roots: the store, not the history, was altered.
    assert "checkpoint" not in _checks(report)


def test_change_a_stored_interior_node(ledger: Ledger, raw: Raw, sealed: dict[str, Any]) -> None:
    raw.q("UPDATE audit_tree SET hash = ? WHERE level = 3 AND idx = 1", (bytes(32),))
    report = _failed(ledger)
    tree = next(f for f in report.failures if f.check == "tree")
    assert tree.level == 3 and tree.leaf_index == 8
    assert "checkpoint" not in _checks(report)


def test_delete_a_stored_node(ledger: Ledger, raw: Raw, sealed: dict[str, Any]) -> None:
    raw.q("DELETE FROM audit_tree WHERE level = 3 AND idx = 2")
    report = _failed(ledger)
    assert any(f.check == "tree" and f.level == 3 for f in report.failures)


def test_forge_a_checkpoint(ledger: Ledger, raw: Raw, sealed: dict[str, Any]) -> None:
    size = sealed["size"]
    (note,) = raw.q("SELECT note FROM audit_checkpoints WHERE tree_size = ?", (size,))[0]
    lines = note.split("\n")
    # another root, same signature (a root began with "A" one time in 64: then unchanged)
    lines[2] = ("B" if lines[2].startswith("A") else "A") + lines[2][1:]
    raw.q("UPDATE audit_checkpoints SET note = ? WHERE tree_size = ?", ("\n".join(lines), size))
    report = _failed(ledger)
    forged = next(f for f in report.failures if f.check == "signature")
    assert forged.tree_size == size


def test_checkpoint_signed_by_another_key(ledger: Ledger, raw: Raw, sealed: dict[str, Any]) -> None:
    size = sealed["size"]
    ((root,),) = raw.q("SELECT root FROM audit_checkpoints WHERE tree_size = ?", (size,))
    origin = audit(ledger).origin
    mallory = Signer.generate(origin)  # same name, another key
    note = sign_note(format_checkpoint(Checkpoint(origin, size, bytes(root))), mallory)
    raw.q("UPDATE audit_checkpoints SET note = ? WHERE tree_size = ?", (note, size))
    report = _failed(ledger)
    assert any(f.check == "signature" and f.tree_size == size for f in report.failures)


def test_sign_an_inconsistent_checkpoint(ledger: Ledger, raw: Raw, sealed: dict[str, Any]) -> None:
    """Someone with the key signs a checkpoint whose root the events do not give."""
    ids = sealed["ids"]
    old = sealed["size"]
    ledger.execute({"type": "record_dialogue", "subject": ids[0]})
    ledger.execute({"type": "record_dialogue", "subject": ids[2]})
    size = service.seal(ledger).tree_size
    log = audit(ledger)
    assert log.signer is not None
    bogus_root = hashlib.sha256(b"another history").digest()
    note = sign_note(format_checkpoint(Checkpoint(log.origin, size, bogus_root)), log.signer)
    raw.q(
        "UPDATE audit_checkpoints SET note = ?, root = ? WHERE tree_size = ?",
        (note, bogus_root, size),
    )
    report = _failed(ledger)
    checks = {f.check: f for f in report.failures}
    assert checks["checkpoint"].tree_size == size
    assert checks["checkpoint"].leaf_index == old  # the change lies after the good checkpoint
    assert checks["consistency"].tree_size == size


def test_rewritten_history_with_a_rebuilt_tree(
    ledger: Ledger, raw: Raw, sealed: dict[str, Any], settings: Settings
) -> None:
    """An attacker without the key alters an event and rebuilds the whole stored tree to
    match: leaves and nodes agree, but the signed roots do not."""
    _rewrite_history(raw, 7)
    report = _failed(ledger)
    assert _checks(report) == {"checkpoint"}
    failure = report.failures[0]
    assert failure.tree_size == sealed["size"] and failure.leaf_index == 0


def _rewrite_history(raw: Raw, nid: int) -> None:
    """Alter one event and rebuild the whole stored tree to match (no key needed)."""
    _, _, _, state = raw.event(nid)
    doc = orjson.loads(bytes(state))
    doc["actor"] = "someone else"
    raw.set_state(nid, orjson.dumps(doc))
    rows = raw.q(
        "SELECT NID, originator_id, originator_version, topic, state FROM EVENTS ORDER BY NID"
    )
    hashes = [
        hashlib.sha256(b"\x00" + leaf_data(int(n), o, int(v), t, bytes(s))).digest()
        for n, o, v, t, s in rows
    ]

    class Nothing:
        def get(self, level: int, index: int) -> bytes:
            raise AssertionError("an empty tree reads nothing")

    raw.q("DELETE FROM audit_tree")
    for level, index, digest in append_leaves(0, Nothing(), hashes):
        if not is_stored(level):
            continue
        nid_value = int(rows[index][0]) if level == 0 else None
        raw.q(
            "INSERT INTO audit_tree (level, idx, hash, notification_id) VALUES (?, ?, ?, ?)",
            (level, index, digest, nid_value),
        )


@pytest.mark.parametrize("rewrite", [False, True], ids=["checkpoints_removed", "history_too"])
def test_removed_checkpoints_are_not_signed_again(
    ledger: Ledger, raw: Raw, sealed: dict[str, Any], rewrite: bool
) -> None:
    """Someone who can write to the database but has no signing key rewrites history (or
    not), deletes every checkpoint that binds it and waits for the next seal. The signer
    keeps its newest checkpoint outside the database (the audit witness): it refuses to
    sign, and verify says the witnessed checkpoint is gone (both once passed)."""
    if rewrite:
        _rewrite_history(raw, 7)
    raw.q("DELETE FROM audit_checkpoints")
    with pytest.raises(AuditError, match="no longer holds"):
        service.seal(ledger)
    report = _failed(ledger)
    assert "witness" in _checks(report)
    witness = next(f for f in report.failures if f.check == "witness")
    assert witness.tree_size == sealed["size"]


def test_the_witness_moves_forward_only(ledger: Ledger, sealed: dict[str, Any]) -> None:
    """Each seal that signs moves the witness on; an older checkpoint never replaces it."""
    log = audit(ledger)
    assert log.witness is not None
    kept = log.witness.read(log.verifier, log.origin)
    assert kept is not None and kept.size == sealed["size"]
    ledger.execute({"type": "record_dialogue", "subject": sealed["ids"][0]})
    newer = service.seal(ledger)
    assert newer.checkpoint is not None
    newest = log.witness.read(log.verifier, log.origin)
    assert newest is not None and newest.size == sealed["size"] + 1
    first = log.store.checkpoints()[0]
    assert log.witness.advance(first.note, log.verifier, log.origin) is False
    assert log.witness.read(log.verifier, log.origin) == newest
    assert log.witness.path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # PostgreSQL: a uuid column
def test_an_id_rewritten_in_another_form(ledger: Ledger, raw: Raw, sealed: dict[str, Any]) -> None:
    """SQLite keeps ids as lowercase hex: upper case hides a subject's events from the
    ledger, so it must not give the same leaf (it once did, and verify passed)."""
    nid = 6
    raw.q("UPDATE EVENTS SET originator_id = upper(originator_id) WHERE NID = ?", (nid,))
    report = _failed(ledger)
    first = report.first_bad_leaf
    assert first is not None and first.notification_id == nid and "event" in _checks(report)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # PostgreSQL: a bytea column
def test_a_state_stored_as_text_is_reported(
    ledger: Ledger, raw: Raw, sealed: dict[str, Any]
) -> None:
    """An edit that turns the state into text (SQLite's replace()) is a bad event in the
    report, not a crash of verify."""
    nid = 4
    raw.q("UPDATE EVENTS SET state = CAST(state AS TEXT) WHERE NID = ?", (nid,))
    report = _failed(ledger)
    first = report.first_bad_leaf
    assert first is not None and first.notification_id == nid


def test_inserted_event_after_sealing(ledger: Ledger, raw: Raw, sealed: dict[str, Any]) -> None:
    """An event slipped in below the sealed position (SQLite reuses a deleted rowid)."""
    nid = 3
    _, _, topic, state = raw.event(nid)
    raw.q("DELETE FROM EVENTS WHERE NID = ?", (nid,))
    other = uuid.uuid4()
    key = other.hex if raw.dialect == "sqlite" else other
    raw.q(
        "INSERT INTO EVENTS (NID, originator_id, originator_version, topic, state) "
        "VALUES (?, ?, ?, ?, ?)",
        (nid, key, 1, topic, state),
    )
    report = _failed(ledger)
    first = report.first_bad_leaf
    assert first is not None and first.notification_id == nid
    assert first.subject == str(other)


def test_cli_verify_names_the_bad_leaf(
    ledger: Ledger, raw: Raw, sealed: dict[str, Any], cli_env: dict[str, str]
) -> None:
    import subprocess
    import sys

    ok = subprocess.run(
        [sys.executable, "-m", "ledger", "audit", "verify", "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert orjson.loads(ok.stdout)["ok"] is True
    oid, version, _, state = raw.event(12)
    raw.set_state(12, bytes(state).replace(b'"actor":null', b'"actor":"x"'))
    bad = subprocess.run(
        [sys.executable, "-m", "ledger", "audit", "verify", "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    result = orjson.loads(bad.stdout)
    assert result["ok"] is False
    assert result["first_bad_leaf"]["notification_id"] == 12
    assert result["first_bad_leaf"]["subject"] == subject_of(oid)
    assert result["first_bad_leaf"]["version"] == version
