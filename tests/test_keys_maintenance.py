"""Key store maintenance: reindexing the lookup index, rewrapping under a new master key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.crypto.lookup import lookup_digest
from ledger.facade import Ledger

SUBJECT = "7a3c1e55-3b0d-4c8e-9d6a-1f2e3d4c5b6a"


def _register(ledger: Ledger, subject: str, email: str) -> None:
    result = ledger.execute(
        {
            "type": "register_subject",
            "subject": subject,
            "kind": "prospect",
            "purpose": "customer_administration",
            "legal_basis": "contract",
            "identifiers": {"email": email, "phone": "+45 20 30 40 50"},
        }
    )
    assert result["ok"], result


def test_reindex_rebuilds_lost_index_rows_but_not_for_erased_subjects(ledger: Ledger) -> None:
    _register(ledger, SUBJECT, "Kaj.Munk@example.dk")
    erased = "0b5f1c7e-2d3a-4e8f-9a6b-7c8d9e0f1a2b"
    _register(ledger, erased, "gone@example.dk")
    assert ledger.execute({"type": "erase", "subject": erased})["ok"]
    ledger.keystore.remove_lookups(SUBJECT)  # as if a crash lost the rows
    assert ledger.find("email", "kaj.munk@example.dk") == []

    assert ledger.reindex_lookups() == 2  # e-mail and phone of the live subject
    assert ledger.find("email", " KAJ.MUNK@example.dk") == [SUBJECT]
    assert ledger.find("phone", "20304050") == [SUBJECT]
    assert ledger.find("email", "gone@example.dk") == []

    # a row an old race wrote back after the erasure: the reindex removes it
    digest = lookup_digest(ledger.keystore.lookup_key(), "email", "gone@example.dk")
    with ledger.keystore._lock:
        ledger.keystore._db.execute(
            "INSERT INTO ledger_lookup (kind, digest, subject) VALUES (?, ?, ?)",
            ("email", digest, erased),
        )
        ledger.keystore._db.commit()
    assert ledger.keystore.find("email", digest) == [erased]
    ledger.reindex_lookups()
    assert ledger.keystore.find("email", digest) == []


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _register_karen(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`ledger exec` of one registration with an e-mail, sent with an idempotency key (its
    week's receipt key must survive a rewrap too)."""
    command = {
        "type": "register_subject",
        "subject": SUBJECT,
        "kind": "prospect",
        "purpose": "customer_administration",
        "legal_basis": "contract",
        "identifiers": {"email": "karen@example.dk"},
        "idempotency_key": "signup-karen",
    }
    return subprocess.run(
        [sys.executable, "-m", "ledger", "exec", "-"],
        input=json.dumps(command) + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_rewrap_with_a_key_file_keeps_every_value_readable(cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k != "LEDGER_MASTER_KEY"}
    done = _register_karen(env)
    assert done.returncode == 0, done.stderr
    key_file = Path(env["LEDGER_HOME"]) / "master.key"
    before = key_file.read_text()

    done = _run(env, "keys", "rewrap")
    assert done.returncode == 0, done.stderr
    assert key_file.read_text() != before
    assert os.stat(key_file).st_mode & 0o777 == 0o600

    shown = _run(env, "subject", "show", SUBJECT, "--reveal", "--purpose", "check", "--json")
    assert shown.returncode == 0, shown.stderr
    values = {d["category"]: d["value"] for d in json.loads(shown.stdout)["data"]}
    assert values == {"email": "karen@example.dk"}
    repeat = _register_karen(env)  # its receipt's hash is checked with the rewrapped key
    assert repeat.returncode == 0 and json.loads(repeat.stdout)["ok"] is True, repeat.stdout

    # The old master key no longer opens the key store.
    wrong = {**env, "LEDGER_MASTER_KEY": before.strip()}
    refused = _run(wrong, "subject", "show", SUBJECT)
    assert refused.returncode != 0


def test_a_rewrap_that_cannot_keep_its_new_key_changes_nothing(cli_env: dict[str, str]) -> None:
    """The new master key is written (and synced) before the key store commits; if that
    fails the rewrap is rolled back and the old key still opens everything (the new key
    was once written after the commit, and a failure there lost every key)."""
    env = {k: v for k, v in cli_env.items() if k != "LEDGER_MASTER_KEY"}
    done = _register_karen(env)
    assert done.returncode == 0, done.stderr
    home = Path(env["LEDGER_HOME"])
    before = (home / "master.key").read_text()
    (home / "master.new").mkdir()  # the new key cannot be written there
    failed = _run(env, "keys", "rewrap")
    assert failed.returncode != 0
    assert (home / "master.key").read_text() == before
    shown = _run(env, "subject", "show", SUBJECT, "--reveal", "--purpose", "check", "--json")
    assert shown.returncode == 0, shown.stderr
    assert {d["category"]: d["value"] for d in json.loads(shown.stdout)["data"]} == {
        "email": "karen@example.dk"
    }


def test_a_process_with_the_old_master_key_makes_no_keys_after_a_rewrap(
    ledger: Ledger,
) -> None:
    """Keys wrapped under a rotated master key would open under nothing anyone holds: a
    process that opened the key store before a rewrap refuses to write new keys."""
    from ledger.crypto.keystore import KeyStore, KeyStoreError

    _register(ledger, "22222222-2222-4222-8222-222222222222", "first@example.dk")
    rotated = KeyStore.open(ledger.settings.keystore, ledger.keystore._master_key)
    try:
        rotated.rewrap(os.urandom(32))
    finally:
        rotated.close()
    records = len(ledger.keystore.records())
    with pytest.raises(KeyStoreError, match="rotated"):
        ledger.execute(
            {
                "type": "register_subject",
                "kind": "prospect",
                "purpose": "customer_administration",
                "legal_basis": "contract",
                "identifiers": {"email": "second@example.dk"},
            }
        )
    assert len(ledger.keystore.records()) == records


def test_a_rotation_cut_short_after_the_commit_is_finished_at_the_next_start(
    cli_env: dict[str, str],
) -> None:
    """Killed between the key store's commit and moving `master.new` over `master.key`,
    the ledger did not open again ("the master key does not match")."""
    env = {k: v for k, v in cli_env.items() if k != "LEDGER_MASTER_KEY"}
    assert _register_karen(env).returncode == 0
    home = Path(env["LEDGER_HOME"])
    key_file, pending = home / "master.key", home / "master.new"
    cut_short = (
        "import os, sys\n"
        "from ledger.cli import app\n"
        "os.replace = lambda *a: os._exit(9)  # the process dies before the key file moves\n"
        "sys.argv = ['ledger', 'keys', 'rewrap']\n"
        "app()\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", cut_short],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == 9, killed.stderr
    assert pending.exists()
    new_key = pending.read_text()

    shown = _run(env, "subject", "show", SUBJECT, "--reveal", "--purpose", "check", "--json")
    assert shown.returncode == 0, shown.stderr
    assert {d["category"]: d["value"] for d in json.loads(shown.stdout)["data"]} == {
        "email": "karen@example.dk"
    }
    assert key_file.read_text() == new_key and not pending.exists()
    assert os.stat(key_file).st_mode & 0o777 == 0o600
