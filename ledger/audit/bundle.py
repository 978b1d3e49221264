"""The auditor's bundle: export from a ledger, and verify offline with nothing but the bundle.

Layout (docs/audit-format.md §6):

    manifest.json         what the bundle is, and SHA-256 and size of every other file
    manifest.sig          a signed note over SHA-256(manifest.json), by the log's key
    public-key            the log's verifier key (C2SP vkey), one line
    checkpoints.jsonl     every signed checkpoint, oldest first: {"note", "created_at"}
    leaves.jsonl          the leaf data of every event, in log order, one per line
    consistency.jsonl     a consistency proof from every checkpoint to the latest
    proofs/<subject>.json optional: inclusion proofs of one subject's events
    docs/audit-format.md  the format description

The verifier streams leaves.jsonl once (memory: the tree's right border, one integer per
subject and the leaf hashes that proofs refer to), so a bundle of millions of events is
checked in constant memory per event.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson

from ledger.audit.leaves import leaf_data
from ledger.audit.log import AuditLog, b64, prefetched
from ledger.audit.merkle import (
    ProofError,
    SubtreeHashes,
    consistency_proof,
    verify_consistency,
    verify_inclusion,
)
from ledger.audit.note import (
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    open_checkpoint,
    open_note,
    sign_note,
)
from ledger.audit.store import AuditError

__all__ = [
    "BUNDLE_FORMAT",
    "BundleReport",
    "export_bundle",
    "format_doc_path",
    "verify_bundle",
]

BUNDLE_FORMAT = "cekura-ledger-audit-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MANIFEST_NOTE_KIND = "audit-bundle-manifest"
Progress = Callable[[int, int], None]


def _consistency_of(size1: int, size2: int) -> Callable[[SubtreeHashes], list[bytes]]:
    return lambda hashes: consistency_proof(size1, size2, hashes)


def format_doc_path() -> Path:
    """docs/audit-format.md (copied into every bundle).

    Shipped as package data (`ledger/audit/audit-format.md`, a link to the docs folder in
    the source tree), so an installed ledger finds it too.
    """
    return Path(__file__).resolve().with_name("audit-format.md")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_note_text(origin: str, manifest_sha256: str) -> str:
    # Line 2 is not a number, so this note can never be mistaken for a checkpoint.
    return f"{origin}\n{MANIFEST_NOTE_KIND}\nsha256:{manifest_sha256}\n"


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


def export_bundle(
    log: AuditLog,
    out: Path,
    *,
    subjects: Sequence[str] = (),
    controller: str = "",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the bundle of everything the latest checkpoint covers into `out` (empty or new)."""
    if log.signer is None:
        raise AuditError("exporting a bundle needs the signing key (the manifest is signed)")
    signer: Signer = log.signer
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise AuditError(f"{out} is not empty")
    doc = format_doc_path()
    if not doc.exists():
        raise AuditError(f"{doc} is missing: the bundle must carry the format description")
    store = log.store
    subject_ids = [str(UUID(s)) for s in subjects]
    with store.reader() as s:
        checkpoints = s.checkpoints()
        if not checkpoints:
            raise AuditError("no checkpoint yet (run `ledger audit seal`)")
        latest = checkpoints[-1]
        size = latest.tree_size
        with (out / "checkpoints.jsonl").open("wb") as handle:
            for cp in checkpoints:
                handle.write(orjson.dumps({"note": cp.note, "created_at": cp.created_at}) + b"\n")
        with (out / "consistency.jsonl").open("wb") as handle:
            for cp in checkpoints[:-1]:
                hashes = prefetched(s, _consistency_of(cp.tree_size, size))
                line = {"size1": cp.tree_size, "size2": size, "proof": [b64(p) for p in hashes]}
                handle.write(orjson.dumps(line) + b"\n")
        written = 0
        with (out / "leaves.jsonl").open("wb") as handle:
            for row in s.iter_events():
                if written >= size:
                    break
                handle.write(leaf_data(*row) + b"\n")
                written += 1
                if progress is not None and written % 10_000 == 0:
                    progress(written, size)
        if written != size:
            raise AuditError(f"only {written} events for a checkpoint of {size} leaves")
    if progress is not None:
        progress(size, size)
    if subject_ids:
        (out / "proofs").mkdir()
        for subject in subject_ids:
            document = log.prove_subject(UUID(subject), size)
            (out / "proofs" / f"{subject}.json").write_bytes(
                orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
            )
    (out / "public-key").write_text(log.verifier.vkey() + "\n", encoding="utf-8")
    (out / "docs").mkdir()
    (out / "docs" / "audit-format.md").write_bytes(doc.read_bytes())
    files = {
        path.relative_to(out).as_posix(): {
            "sha256": _sha256_file(path),
            "size": path.stat().st_size,
        }
        for path in sorted(out.rglob("*"))
        if path.is_file()
    }
    manifest = {
        "format": BUNDLE_FORMAT,
        "origin": log.origin,
        "controller": controller,
        "created_at": datetime.now(UTC).isoformat(),
        "tree_size": size,
        "checkpoints": len(checkpoints),
        "latest_checkpoint": latest.note,
        "public_key": log.verifier.vkey(),
        "subjects": subject_ids,
        "files": files,
    }
    manifest_bytes = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    (out / MANIFEST).write_bytes(manifest_bytes + b"\n")
    digest = hashlib.sha256(manifest_bytes + b"\n").hexdigest()
    (out / SIGNATURE).write_text(
        sign_note(_manifest_note_text(log.origin, digest), signer), encoding="utf-8"
    )
    return {"out": str(out), "tree_size": size, "checkpoints": len(checkpoints), "files": files}


# --------------------------------------------------------------------------------------
# Offline verification
# --------------------------------------------------------------------------------------


class BundleError(Exception):
    """A check of the bundle failed (the message names the file and the place)."""


@dataclass
class BundleReport:
    """What `verify --bundle` checked, and the first failure if any."""

    path: str
    ok: bool = False
    error: str | None = None
    public_key: str = ""
    origin: str = ""
    leaves: int = 0
    subjects: int = 0
    checkpoints: int = 0
    latest_size: int | None = None
    latest_root: str | None = None
    proofs_checked: int = 0
    checks: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


def verify_bundle(
    path: Path, *, public_key: str | None = None, progress: Progress | None = None
) -> BundleReport:
    """Check a bundle with nothing but its files (and, better, a key the auditor trusts).

    Without `public_key` the bundle's own `public-key` is used; the report shows it so
    the auditor can compare it with the key published by the controller.
    """
    report = BundleReport(path=str(path))
    started = time.perf_counter()
    try:
        _verify(path, public_key, report, progress)
        report.ok = True
    except BundleError as exc:
        report.error = str(exc)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        # A malformed file the checks above did not foresee: still a failure, never a crash.
        report.error = f"malformed bundle: {type(exc).__name__}: {exc}"
    report.seconds = time.perf_counter() - started
    return report


def _b64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise BundleError(f"{where}: expected a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"{where}: not valid base64") from None


def _json_lines(path: Path) -> list[Any]:
    out = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise BundleError(f"{path.name} line {number}: not JSON") from None
    return out


def _verify(
    path: Path, public_key: str | None, report: BundleReport, progress: Progress | None
) -> None:
    if not path.is_dir():
        raise BundleError(f"{path} is not a folder")
    # 1. The key, the manifest's signature, and every file's digest.
    key_file = path / "public-key"
    if not key_file.is_file():
        raise BundleError("public-key is missing")
    bundled_key = key_file.read_text(encoding="utf-8").strip()
    try:
        verifier = Verifier.parse(public_key or bundled_key)
    except NoteError as exc:
        raise BundleError(f"public key: {exc}") from None
    report.public_key = verifier.vkey()
    if public_key is not None and Verifier.parse(bundled_key) != verifier:
        raise BundleError("public-key in the bundle is not the key you gave")
    try:
        manifest_bytes = (path / MANIFEST).read_bytes()
        signature = (path / SIGNATURE).read_text(encoding="utf-8")
    except OSError:
        raise BundleError("manifest.json or manifest.sig is missing") from None
    try:
        text = open_note(signature, verifier)
    except NoteError as exc:
        raise BundleError(f"manifest.sig: {exc}") from None
    try:
        manifest = orjson.loads(manifest_bytes)
    except orjson.JSONDecodeError:
        raise BundleError("manifest.json is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"manifest.json: not a {BUNDLE_FORMAT} manifest")
    origin = manifest.get("origin")
    if not isinstance(origin, str):
        raise BundleError("manifest.json: no origin")
    report.origin = origin
    expected = _manifest_note_text(origin, hashlib.sha256(manifest_bytes).hexdigest())
    if text != expected:
        raise BundleError("manifest.sig does not sign this manifest.json")
    report.checks.append("manifest signed by the public key")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError("manifest.json: no file list")
    present = {
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.is_file() and p.name not in (MANIFEST, SIGNATURE)
    }
    extra = sorted(present - set(files))
    if extra:
        raise BundleError(f"{extra[0]} is in the bundle but not in the manifest")
    for name, entry in sorted(files.items()):
        file = path / name
        if name not in present:
            raise BundleError(f"{name} is listed in the manifest but missing")
        if file.stat().st_size != entry.get("size") or _sha256_file(file) != entry.get("sha256"):
            raise BundleError(f"{name} does not match its SHA-256 in the manifest")
    report.checks.append(f"{len(files)} files match their SHA-256")
    if manifest.get("public_key") != bundled_key:
        raise BundleError("manifest.json names another public key than public-key")

    # 2. Checkpoints: signatures, origin, increasing sizes.
    checkpoints: list[Checkpoint] = []
    latest_note = ""
    for number, entry in enumerate(_json_lines(path / "checkpoints.jsonl"), start=1):
        note = entry.get("note") if isinstance(entry, dict) else None
        if not isinstance(note, str):
            raise BundleError(f"checkpoints.jsonl line {number}: no note")
        try:
            cp = open_checkpoint(note, verifier, origin)
        except NoteError as exc:
            raise BundleError(f"checkpoints.jsonl line {number}: {exc}") from None
        if checkpoints and cp.size <= checkpoints[-1].size:
            raise BundleError(f"checkpoints.jsonl line {number}: sizes must increase")
        checkpoints.append(cp)
        latest_note = note
    if not checkpoints:
        raise BundleError("checkpoints.jsonl holds no checkpoint")
    latest = checkpoints[-1]
    report.checkpoints = len(checkpoints)
    report.latest_size = latest.size
    report.latest_root = b64(latest.root)
    if manifest.get("tree_size") != latest.size or manifest.get("latest_checkpoint") != latest_note:
        raise BundleError("manifest.json disagrees with the latest checkpoint")
    report.checks.append(f"{len(checkpoints)} checkpoints signed, sizes increasing")

    # 3. Consistency proofs from every checkpoint to the latest.
    lines = _json_lines(path / "consistency.jsonl")
    if len(lines) != len(checkpoints) - 1:
        raise BundleError("consistency.jsonl needs one proof per earlier checkpoint")
    for number, (cp, entry) in enumerate(zip(checkpoints, lines, strict=False), start=1):
        where = f"consistency.jsonl line {number}"
        if not isinstance(entry, dict) or entry.get("size1") != cp.size:
            raise BundleError(f"{where}: expected a proof from size {cp.size}")
        if entry.get("size2") != latest.size:
            raise BundleError(f"{where}: expected a proof to size {latest.size}")
        proof = [_b64(p, where) for p in entry.get("proof") or []]
        try:
            verify_consistency(cp.size, latest.size, proof, cp.root, latest.root)
        except ProofError as exc:
            raise BundleError(
                f"{where}: the checkpoint of {latest.size} leaves is not consistent with the "
                f"one of {cp.size} leaves ({exc})"
            ) from None
    report.checks.append("the latest checkpoint is consistent with every earlier one")

    # 4. Subject proofs: read first, so the leaf pass can collect the hashes they name.
    proofs = _read_proofs(path, manifest)
    needed = {e["leaf_index"] for p in proofs.values() for e in p["events"] if e["included"]}

    # 5. Leaves: canonical, in order, versions contiguous; roots at every checkpoint size.
    leaf_hashes, per_subject = _walk_leaves(path, checkpoints, needed, report, progress)
    report.checks.append(
        f"{report.leaves} leaves canonical, in order, each subject's versions contiguous"
    )
    report.checks.append("every checkpoint's root recomputed from the leaves")

    # 6. Subject proofs against their checkpoints and the leaves.
    roots = {cp.size: cp.root for cp in checkpoints}
    for subject, document in proofs.items():
        _check_subject_proof(subject, document, roots, leaf_hashes, per_subject, report)
    if proofs:
        report.checks.append(
            f"inclusion proofs of {len(proofs)} subject{'' if len(proofs) == 1 else 's'}"
        )


def _read_proofs(path: Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    listed = manifest.get("subjects") or []
    found: dict[str, dict[str, Any]] = {}
    folder = path / "proofs"
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if sorted(f"{s}.json" for s in listed) != names:
        raise BundleError("proofs/ does not hold exactly the subjects the manifest lists")
    for subject in listed:
        where = f"proofs/{subject}.json"
        data = orjson.loads((folder / f"{subject}.json").read_bytes())
        if not isinstance(data, dict) or data.get("subject") != subject:
            raise BundleError(f"{where}: not a proof for {subject}")
        events = data.get("events")
        if not isinstance(events, list):
            raise BundleError(f"{where}: no events")
        for entry in events:
            if not isinstance(entry, dict) or not isinstance(entry.get("included"), bool):
                raise BundleError(f"{where}: malformed event entry")
            if entry["included"] and not isinstance(entry.get("leaf_index"), int):
                raise BundleError(f"{where}: an included event needs its leaf_index")
        found[subject] = data
    return found


def _walk_leaves(
    path: Path,
    checkpoints: list[Checkpoint],
    needed: set[int],
    report: BundleReport,
    progress: Progress | None,
) -> tuple[dict[int, tuple[bytes, str, int]], dict[str, int]]:
    sizes = [cp.size for cp in checkpoints]
    roots = {cp.size: cp.root for cp in checkpoints}
    total = sizes[-1]
    sha256 = hashlib.sha256
    loads, dumps, sort = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS
    versions: dict[str, int] = {}
    kept: dict[int, tuple[bytes, str, int]] = {}
    stack: list[bytes] = []
    next_cp = 0
    last_id = 0
    i = 0
    leaves = path / "leaves.jsonl"
    with leaves.open("rb") as handle:
        for line in handle:
            where = f"leaves.jsonl line {i + 1}"
            if not line.endswith(b"\n"):
                raise BundleError(f"{where}: the last line must end with a newline")
            data = line[:-1]
            try:
                leaf = loads(data)
            except orjson.JSONDecodeError:
                raise BundleError(f"{where}: not JSON") from None
            if type(leaf) is not dict or leaf.keys() != _LEAF_KEYS:
                raise BundleError(f"{where}: a leaf has exactly the keys {sorted(_LEAF_KEYS)}")
            if dumps(leaf, option=sort) != data:
                raise BundleError(f"{where}: not in canonical form")
            nid, subject, version = leaf["id"], leaf["originator_id"], leaf["originator_version"]
            if type(nid) is not int or nid <= last_id:
                raise BundleError(f"{where}: ids must increase (id {nid} after {last_id})")
            last_id = nid
            expected = versions.get(subject, 0) + 1
            if version != expected:
                raise BundleError(
                    f"{where}: subject {subject} version {version} where {expected} was due "
                    f"(notification {nid})"
                )
            versions[subject] = version
            digest = sha256(b"\x00" + data).digest()
            if i in needed:
                kept[i] = (digest, subject, version)
            node, index = digest, i
            while index & 1:
                node = sha256(b"\x01" + stack.pop() + node).digest()
                index >>= 1
            stack.append(node)
            i += 1
            if next_cp < len(sizes) and sizes[next_cp] == i:
                root = stack[-1]
                for left in reversed(stack[:-1]):
                    root = sha256(b"\x01" + left + root).digest()
                if root != roots[i]:
                    raise BundleError(
                        f"the leaves up to line {i} do not give the root signed by the "
                        f"checkpoint of {i} leaves"
                    )
                next_cp += 1
            if progress is not None and i % 50_000 == 0:
                progress(i, total)
    if progress is not None:
        progress(i, total)
    if i != total or next_cp != len(sizes):
        raise BundleError(f"leaves.jsonl has {i} leaves; the latest checkpoint has {total}")
    report.leaves = i
    report.subjects = len(versions)
    return kept, versions


_LEAF_KEYS = frozenset({"id", "originator_id", "originator_version", "topic", "state"})


def _check_subject_proof(
    subject: str,
    data: dict[str, Any],
    roots: dict[int, bytes],
    leaf_hashes: dict[int, tuple[bytes, str, int]],
    per_subject: dict[str, int],
    report: BundleReport,
) -> None:
    where = f"proofs/{subject}.json"
    checkpoint = data.get("checkpoint") or {}
    size = checkpoint.get("tree_size")
    if size not in roots or _b64(checkpoint.get("root"), where) != roots[size]:
        raise BundleError(f"{where}: its checkpoint is not one of the signed checkpoints")
    versions = []
    for entry in data["events"]:
        if not entry["included"]:
            raise BundleError(f"{where}: version {entry.get('version')} is not in the log")
        index = entry["leaf_index"]
        if index not in leaf_hashes:
            raise BundleError(f"{where}: leaf {index} is not in leaves.jsonl")
        digest, leaf_subject, version = leaf_hashes[index]
        if leaf_subject != subject or entry.get("version") != version:
            raise BundleError(f"{where}: leaf {index} is not version {entry.get('version')}")
        if _b64(entry.get("leaf_hash"), where) != digest:
            raise BundleError(f"{where}: the leaf hash of leaf {index} is not the leaf's")
        proof = [_b64(p, where) for p in entry.get("proof") or []]
        try:
            verify_inclusion(index, size, digest, proof, roots[size])
        except ProofError as exc:
            raise BundleError(f"{where}: leaf {index}: {exc}") from None
        versions.append(version)
        report.proofs_checked += 1
    if versions != list(range(1, per_subject.get(subject, 0) + 1)):
        raise BundleError(f"{where}: the proofs do not cover versions 1..n of the subject")
