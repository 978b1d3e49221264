"""`ledger audit verify` from the command line (SQLite and PostgreSQL): on a fresh home, on a
log written only through the Python API (never sealed), and on a copy of a home without
the signing key, where the auditor gives the public key with `--public-key`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import orjson

from ledger.audit.keys import DEFAULT_ORIGIN
from ledger.audit.note import Signer
from ledger.config import Settings
from ledger.facade import Ledger


def ledger_cli(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _register() -> dict[str, object]:
    return {
        "type": "register_subject",
        "subject": str(uuid.uuid4()),
        "kind": "prospect",
        "purpose": "customer_administration",
        "legal_basis": "legitimate_interest",
    }


def test_verify_on_a_fresh_home(cli_env: dict[str, str]) -> None:
    done = ledger_cli(cli_env, "audit", "verify", "--json")
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["ok"] and report["events"] == 0 and report["checkpoints"] == 0
    assert "Traceback" not in done.stderr


def test_verify_of_a_log_never_sealed_points_to_seal(
    cli_env: dict[str, str], settings: Settings
) -> None:
    with Ledger.open(settings) as ledger:  # the Python API does not seal
        assert all(r["ok"] for r in ledger.execute_many([_register(), _register()]))
    text = ledger_cli(cli_env, "audit", "verify")
    assert text.returncode == 1
    message = " ".join(text.stderr.split())
    assert "never sealed" in message and "2 events" in message, message
    assert "`ledger audit seal`" in message and "Traceback" not in message
    as_json = ledger_cli(cli_env, "audit", "verify", "--json")
    assert as_json.returncode == 1
    answer = orjson.loads(as_json.stdout)
    assert answer["ok"] is False and "never sealed" in answer["error"]["message"]
    assert not settings.signing_key_file.exists()  # verify neither seals nor makes a key

    sealed = ledger_cli(cli_env, "audit", "seal")
    assert sealed.returncode == 0, sealed.stderr
    after = ledger_cli(cli_env, "audit", "verify", "--json")
    assert after.returncode == 0, after.stdout + after.stderr
    report = orjson.loads(after.stdout)
    assert report["ok"] and report["leaves"] == 2 and report["unsealed"] == 0


def test_verify_with_public_key_on_a_copy_without_the_signing_key(
    cli_env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    lines = "".join(orjson.dumps(_register()).decode() + "\n" for _ in range(3))
    wrote = ledger_cli(cli_env, "exec", stdin=lines)  # the CLI seals after writing
    assert wrote.returncode == 0, wrote.stderr
    key = ledger_cli(cli_env, "audit", "public-key").stdout.strip()
    assert key.startswith(DEFAULT_ORIGIN + "+")

    # The auditor's copy: everything but the signing key (on PostgreSQL the same database).
    copy = tmp_path / "copy"
    shutil.copytree(settings.home, copy, ignore=shutil.ignore_patterns("signing.key"))
    env = {**cli_env, "LEDGER_HOME": str(copy)}

    refused = ledger_cli(env, "audit", "verify")
    assert refused.returncode == 1
    assert "--public-key" in refused.stderr and "--key " not in refused.stderr
    assert "Traceback" not in refused.stderr

    checked = ledger_cli(env, "audit", "verify", "--public-key", key, "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = orjson.loads(checked.stdout)
    assert report["ok"] and report["leaves"] == 3 and report["public_key"] == key
    key_file = tmp_path / "published-key"
    key_file.write_text(key + "\n")
    from_file = ledger_cli(env, "audit", "verify", "--public-key", str(key_file))
    assert from_file.returncode == 0, from_file.stdout + from_file.stderr
    assert "OK" in from_file.stdout

    other = Signer.generate(DEFAULT_ORIGIN).verifier.vkey()
    wrong = ledger_cli(env, "audit", "verify", "--public-key", other)
    assert wrong.returncode == 1 and "FAILED" in wrong.stdout
    assert not (copy / "signing.key").exists()  # none is made on the copy
