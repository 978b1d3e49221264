"""Naive RFC 6962 section 2.1 reference Merkle tree, for tests only.

A literal transcription of the recursive definitions (MTH, PATH, PROOF/SUBPROOF) over
the leaf *data* D[n], with its own hashing, so the fast code in ``merkle.py`` is checked
against something that shares no code with it. Quadratic or worse; never use in
production paths.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "reference_consistency_proof",
    "reference_inclusion_proof",
    "reference_root",
    "reference_subtree_hashes",
]


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n > 1), by plain search."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def reference_root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) for the leaf data ``leaves``."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return _leaf(leaves[0])
    k = _split(n)
    return _node(reference_root(leaves[:k]), reference_root(leaves[k:]))


def reference_inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]), ordered from the leaf's sibling up to the root's child."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"index {index} is not in [0, {n})")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*reference_inclusion_proof(index, leaves[:k]), reference_root(leaves[k:])]
    return [*reference_inclusion_proof(index - k, leaves[k:]), reference_root(leaves[:k])]


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [reference_root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), reference_root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), reference_root(leaves[:k])]


def reference_consistency_proof(size1: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(size1, D[n]) = SUBPROOF(size1, D[n], true), for 0 < size1 <= n."""
    if not 0 < size1 <= len(leaves):
        raise ValueError(f"need 0 < size1 <= {len(leaves)}, got {size1}")
    return _subproof(size1, leaves, True)


def reference_subtree_hashes(leaves: Sequence[bytes]) -> dict[tuple[int, int], bytes]:
    """Every complete subtree hash ``(level, index) -> MTH`` of the tree over ``leaves``."""
    out: dict[tuple[int, int], bytes] = {}
    n = len(leaves)
    level = 0
    while (1 << level) <= n:
        width = 1 << level
        for index in range(n // width):
            out[(level, index)] = reference_root(leaves[index * width : (index + 1) * width])
        level += 1
    return out
