"""transparency-dev/merkle proof vectors (shared/testdata/merkle) against ledger.audit.merkle.

One test per JSON file. ``wantErr: true`` must raise ProofError; otherwise the proof must
verify. The folder is required: a missing or incomplete folder fails the run.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from ledger.audit.merkle import ProofError, verify_consistency, verify_inclusion

VECTOR_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "merkle"

# Counted once by hand (find ... -name '*.json'); a changed count must be looked at.
EXPECTED_COUNTS = {"inclusion": 59, "consistency": 57}
EXPECTED_TOTAL = sum(EXPECTED_COUNTS.values())  # 116

INCLUSION_KEYS = {"leafIdx", "treeSize", "root", "leafHash", "proof", "desc", "wantErr"}
CONSISTENCY_KEYS = {"size1", "size2", "root1", "root2", "proof", "desc", "wantErr"}


def _vector_files() -> list[Path]:
    if not VECTOR_DIR.is_dir():
        return []
    return sorted(VECTOR_DIR.rglob("*.json"))


def _rel(path: Path) -> str:
    return path.relative_to(VECTOR_DIR).as_posix()


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value, validate=True) if value else b""


def _proof(value: list[str] | None) -> list[bytes]:
    return [_b64(p) for p in value or []]


def _load(path: Path) -> tuple[str, dict[str, Any]]:
    kind = path.relative_to(VECTOR_DIR).parts[0]
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    expected_keys = {"inclusion": INCLUSION_KEYS, "consistency": CONSISTENCY_KEYS}[kind]
    assert set(data) == expected_keys, f"unexpected fields in {_rel(path)}: {sorted(data)}"
    assert isinstance(data["wantErr"], bool)
    return kind, data


def _verify(kind: str, v: dict[str, Any]) -> None:
    if kind == "inclusion":
        verify_inclusion(
            v["leafIdx"], v["treeSize"], _b64(v["leafHash"]), _proof(v["proof"]), _b64(v["root"])
        )
    else:
        verify_consistency(
            v["size1"], v["size2"], _proof(v["proof"]), _b64(v["root1"]), _b64(v["root2"])
        )


_FILES = _vector_files()
_PARAMS = [pytest.param(p, id=_rel(p)) for p in _FILES] or [
    pytest.param(None, id="vector-folder-missing")
]


def test_vector_folder_is_complete() -> None:
    assert VECTOR_DIR.is_dir(), f"Merkle test vectors missing: {VECTOR_DIR}"
    counts = {kind: 0 for kind in EXPECTED_COUNTS}
    for path in _FILES:
        counts[path.relative_to(VECTOR_DIR).parts[0]] += 1
    assert counts == EXPECTED_COUNTS
    assert len(_FILES) == EXPECTED_TOTAL
    assert len(_PARAMS) == EXPECTED_TOTAL


@pytest.mark.parametrize("path", _PARAMS)
def test_vector(path: Path | None) -> None:
    assert path is not None, f"Merkle test vectors missing: {VECTOR_DIR}"
    kind, vector = _load(path)
    if vector["wantErr"]:
        with pytest.raises(ProofError):
            _verify(kind, vector)
    else:
        _verify(kind, vector)
