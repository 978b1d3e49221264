"""The auditor's bundle: it verifies offline, holds no ciphertext or plaintext, and any
change to any of its files makes the verification fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.audit import service
from ledger.audit.bundle import verify_bundle
from ledger.audit.note import Signer
from ledger.facade import Ledger
from tests.audit_support import PLAINTEXTS, story


@pytest.fixture
def bundle(ledger: Ledger, tmp_path: Path) -> dict[str, Any]:
    ids = story(ledger, subjects=3)
    service.seal(ledger)
    ledger.execute({"type": "record_dialogue", "subject": ids[0]})
    service.seal(ledger)
    ledger.execute({"type": "record_dialogue", "subject": ids[2]})  # sealed by the export
    out = tmp_path / "bundle"
    result = service.export(ledger, out, subjects=[ids[0], ids[1]])
    assert result["tree_size"] == ledger.max_position()
    return {"out": out, "ids": ids, "key": service.public_key(ledger)}


def test_bundle_verifies_offline(bundle: dict[str, Any]) -> None:
    out: Path = bundle["out"]
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == sorted(
        [
            "checkpoints.jsonl",
            "consistency.jsonl",
            "docs/audit-format.md",
            "leaves.jsonl",
            "manifest.json",
            "manifest.sig",
            "public-key",
            *(f"proofs/{s}.json" for s in bundle["ids"][:2]),
        ]
    )
    report = verify_bundle(out, public_key=bundle["key"])
    assert report.ok, report.error
    assert report.checkpoints == 3 and report.proofs_checked > 0
    assert verify_bundle(out).ok  # with the bundle's own key too


def test_bundle_holds_no_ciphertext_or_plaintext(bundle: dict[str, Any]) -> None:
    data = b"".join(p.read_bytes() for p in bundle["out"].rglob("*") if p.is_file())
    for text in PLAINTEXTS:
        assert text.encode() not in data
    for line in (bundle["out"] / "leaves.jsonl").read_bytes().splitlines():
        assert b'"ct":' not in line


def _files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def test_altering_any_file_fails(bundle: dict[str, Any], tmp_path: Path) -> None:
    source: Path = bundle["out"]
    for index, original in enumerate(_files(source)):
        relative = original.relative_to(source)
        for where in ("start", "middle", "end"):
            copy = tmp_path / f"copy-{index}-{where}"
            shutil.copytree(source, copy)
            target = copy / relative
            data = bytearray(target.read_bytes())
            at = {"start": 0, "middle": len(data) // 2, "end": len(data) - 2}[where]
            data[at] ^= 0x01
            target.write_bytes(bytes(data))
            report = verify_bundle(copy, public_key=bundle["key"])
            assert not report.ok, (relative, where)
            assert report.error
            shutil.rmtree(copy)


def test_removing_or_adding_a_file_fails(bundle: dict[str, Any], tmp_path: Path) -> None:
    source: Path = bundle["out"]
    for index, original in enumerate(_files(source)):
        copy = tmp_path / f"less-{index}"
        shutil.copytree(source, copy)
        (copy / original.relative_to(source)).unlink()
        assert not verify_bundle(copy, public_key=bundle["key"]).ok, original.name
        shutil.rmtree(copy)
    extra = tmp_path / "more"
    shutil.copytree(source, extra)
    (extra / "notes.txt").write_text("hello")
    report = verify_bundle(extra, public_key=bundle["key"])
    assert not report.ok and "notes.txt" in (report.error or "")


def test_a_resigned_bundle_fails_against_the_trusted_key(
    bundle: dict[str, Any], tmp_path: Path
) -> None:
    """Someone rebuilds the manifest with their own key: only pinning the key catches it."""
    copy = tmp_path / "resigned"
    shutil.copytree(bundle["out"], copy)
    mallory = Signer.generate("cekura.dk/personal-data-ledger")
    (copy / "public-key").write_text(mallory.verifier.vkey() + "\n")
    report = verify_bundle(copy, public_key=bundle["key"])
    assert not report.ok


def test_truncated_leaves_fail(bundle: dict[str, Any], tmp_path: Path) -> None:
    """Dropping the last leaf and fixing the manifest digest still fails: the manifest is
    signed, and the leaves no longer give the latest root."""
    copy = tmp_path / "short"
    shutil.copytree(bundle["out"], copy)
    leaves = copy / "leaves.jsonl"
    lines = leaves.read_bytes().splitlines(keepends=True)
    leaves.write_bytes(b"".join(lines[:-1]))
    manifest = orjson.loads((copy / "manifest.json").read_bytes())
    import hashlib

    manifest["files"]["leaves.jsonl"] = {
        "sha256": hashlib.sha256(leaves.read_bytes()).hexdigest(),
        "size": leaves.stat().st_size,
    }
    (copy / "manifest.json").write_bytes(orjson.dumps(manifest) + b"\n")
    report = verify_bundle(copy, public_key=bundle["key"])
    assert not report.ok and "manifest" in (report.error or "")


def test_cli_export_and_offline_verify(
    ledger: Ledger, cli_env: dict[str, str], tmp_path: Path
) -> None:
    ids = story(ledger, subjects=2)
    out = tmp_path / "cli-bundle"

    def ledger_cli(*args: str, env: dict[str, str] | None = None) -> Any:
        return subprocess.run(
            [sys.executable, "-m", "ledger", *args],
            env=env if env is not None else cli_env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    exported = ledger_cli("audit", "export", "--out", str(out), "--subject", ids[0], "--json")
    assert exported.returncode == 0, exported.stderr
    checkpoint = ledger_cli("audit", "checkpoint")
    assert checkpoint.returncode == 0 and checkpoint.stdout.startswith("cekura.dk/")
    key = ledger_cli("audit", "public-key").stdout.strip()
    proved = ledger_cli("audit", "prove", "--subject", ids[0], "--json")
    assert proved.returncode == 0, proved.stderr
    assert orjson.loads(proved.stdout)["complete"] is True
    # Offline: no ledger environment at all, only the bundle and the key.
    bare = {k: v for k, v in cli_env.items() if not k.startswith("LEDGER_")}
    bare["LEDGER_HOME"] = str(tmp_path / "nowhere")
    ok = ledger_cli(
        "audit", "verify", "--bundle", str(out), "--public-key", key, "--json", env=bare
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert orjson.loads(ok.stdout)["ok"] is True
    assert not (tmp_path / "nowhere").exists()  # nothing was opened or created
    (out / "public-key").write_text("x")
    bad = ledger_cli("audit", "verify", "--bundle", str(out), "--json", env=bare)
    assert bad.returncode == 1
