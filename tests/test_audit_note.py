"""Signed notes and checkpoints against the C2SP / Go `note` known answers; the signing key
file; and `ledger.audit.merkle` importing with nothing but the standard library and
`cryptography`."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ledger.audit.keys import DEFAULT_ORIGIN, SigningKeyError, load_signer
from ledger.audit.note import (
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    format_checkpoint,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    sign_note,
)
from ledger.config import Settings

# From golang.org/x/mod/sumdb/note (its documentation and tests).
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIGNED = (
    GO_TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXg"
    "KvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
# From the C2SP signed-note specification's example.
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi"
    "2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)


def test_go_known_answer() -> None:
    signer = Signer.parse(GO_SKEY)
    assert signer.skey() == GO_SKEY
    assert signer.verifier.vkey() == GO_VKEY
    assert signer.verifier == Verifier.parse(GO_VKEY)
    assert sign_note(GO_TEXT, signer) == GO_SIGNED  # Ed25519 is deterministic
    assert open_note(GO_SIGNED, Verifier.parse(GO_VKEY)) == GO_TEXT


def test_spec_example() -> None:
    assert open_note(SPEC_NOTE, Verifier.parse(SPEC_VKEY)) == "This is an example message.\n"


def test_tampered_notes_fail() -> None:
    verifier = Verifier.parse(GO_VKEY)
    for bad in (
        GO_SIGNED.replace("problem,", "problem;"),  # text changed
        GO_SIGNED.replace("x08go", "x08gp"),  # signature changed
        GO_SIGNED.replace("\n\n", "\n"),  # no blank line
        GO_SIGNED[:-1],  # no final newline
        GO_SIGNED.replace("— ", "- "),  # not an em dash
    ):
        with pytest.raises(NoteError):
            open_note(bad, verifier)
    with pytest.raises(NoteError):  # signed, but not by this key
        open_note(SPEC_NOTE, verifier)


def test_other_signatures_are_ignored() -> None:
    cosigner = Signer.generate("witness.example")
    cosigned = sign_note(GO_TEXT, cosigner)
    both = GO_SIGNED + cosigned.split("\n\n", 1)[1]
    assert open_note(both, Verifier.parse(GO_VKEY)) == GO_TEXT
    assert open_note(both, cosigner.verifier) == GO_TEXT


def test_malformed_keys() -> None:
    for bad in ("", "name+00000000+AAAA", GO_VKEY.replace("c74f20a3", "c74f20a4"), "a b+1+2"):
        with pytest.raises(NoteError):
            Verifier.parse(bad)
    with pytest.raises(NoteError):
        Signer.parse(GO_SKEY.replace("PRIVATE", "PUBLIC"))


def test_checkpoint_round_trip() -> None:
    signer = Signer.generate(DEFAULT_ORIGIN)
    root = bytes(range(32))
    body = format_checkpoint(Checkpoint(DEFAULT_ORIGIN, 1234, root))
    assert body == f"{DEFAULT_ORIGIN}\n1234\n{base64.b64encode(root).decode()}\n"
    note = sign_note(body, signer)
    assert open_checkpoint(note, signer.verifier, DEFAULT_ORIGIN) == Checkpoint(
        DEFAULT_ORIGIN, 1234, root
    )
    with pytest.raises(NoteError):
        open_checkpoint(note, signer.verifier, "another.origin")
    for bad in ("o\n01\nAAAA\n", "o\n1\n" + base64.b64encode(bytes(31)).decode() + "\n", "o\n1\n"):
        with pytest.raises(NoteError):
            parse_checkpoint(bad)
    with_extension = body + "extension line\n"
    assert parse_checkpoint(with_extension).size == 1234


def _settings(home: Path, **env: str) -> Settings:
    return Settings.from_env({"LEDGER_HOME": str(home), **env})


def test_signing_key_file_is_made_once_with_mode_600(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "home")
    found: list[str] = []

    def load() -> None:
        found.append(load_signer(settings).skey())

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(found)) == 1
    path = settings.signing_key_file
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().startswith(f"PRIVATE+KEY+{DEFAULT_ORIGIN}+")
    assert [p.name for p in path.parent.iterdir()] == ["signing.key"]  # no temporary files
    os.chmod(path, 0o644)
    with pytest.raises(SigningKeyError):
        load_signer(settings)


def test_signing_key_from_the_environment(tmp_path: Path) -> None:
    seed = base64.b64encode(bytes(range(32))).decode()
    signer = load_signer(_settings(tmp_path, LEDGER_SIGNING_KEY=seed))
    assert signer.name == DEFAULT_ORIGIN
    assert not (tmp_path / "signing.key").exists()
    go = load_signer(_settings(tmp_path, LEDGER_SIGNING_KEY=GO_SKEY))
    assert go.verifier.vkey() == GO_VKEY
    with pytest.raises(SigningKeyError):
        load_signer(_settings(tmp_path, LEDGER_SIGNING_KEY="not a key"))
    with pytest.raises(SigningKeyError):
        load_signer(_settings(tmp_path / "empty"), create=False)


def test_merkle_needs_only_the_standard_library_and_cryptography() -> None:
    """DESIGN 5.5: an auditor's script can use the proof checks without the ledger's
    dependencies. Run isolated (-I) and list every non-standard module that got loaded."""
    code = (
        "import sys\n"
        "from ledger.audit.merkle import verify_inclusion, verify_consistency, ProofError\n"
        "import ledger.audit.note\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "allowed = set(sys.stdlib_module_names) | {'ledger', 'cryptography', '_cffi_backend',"
        " '__main__', '_distutils_hack', '_openssl', '_rust'}\n"
        "other = sorted(m for m in loaded - allowed if not m.startswith('__editable__'))\n"
        "print(','.join(other))\n"
        "mods = sorted(m for m in sys.modules if m.startswith('ledger'))\n"
        "print(','.join(mods))\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    other, mods = done.stdout.splitlines()
    assert other == ""
    assert set(mods.split(",")) == {
        "ledger",
        "ledger.errors",
        "ledger.audit",
        "ledger.audit.merkle",
        "ledger.audit.note",
    }
