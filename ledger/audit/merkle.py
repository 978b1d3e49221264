"""RFC 6962 / RFC 9162 Merkle tree hashing, proof verification and proof generation.

Pure functions and the standard library only, so an auditor can read and reuse this
file on its own. Modelled on transparency-dev/merkle's small proof functions.

Storage model: the caller stores only *complete* (perfect) subtree hashes, addressed by
``(level, index)``; the node at ``(level, index)`` covers leaves
``[index * 2**level, (index + 1) * 2**level)`` and level 0 holds the leaf hashes.
Proof generation and the root of a tree of any size then need O(log n) reads, because
every incomplete right-edge subtree is a fold of at most log2(n) complete ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "ProofError",
    "SubtreeHashes",
    "append_leaves",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""SHA-256 output size; every hash a verifier accepts must have exactly this length."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root of the empty tree (RFC 6962 section 2.1: MTH({}) = SHA-256())."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class ProofError(ValueError):
    """A proof did not verify; one exception type so callers cannot miss a failure mode."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data); the prefix separates leaves from nodes (second preimages)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right); the interior-node hash of RFC 6962."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


# --------------------------------------------------------------------------------------
# Verification (RFC 9162 sections 2.1.3.2 and 2.1.4.2)
# --------------------------------------------------------------------------------------


def _check_size(name: str, value: int) -> None:
    """Sizes and indices come from untrusted input (JSON, HTTP); reject nonsense early."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProofError(f"{name} must be a non-negative integer, got {value!r}")


def _check_hash(name: str, value: bytes) -> None:
    """A hash of the wrong length can never be a SHA-256 node; refuse it outright."""
    if not isinstance(value, bytes | bytearray):
        raise ProofError(f"{name} must be bytes, got {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise ProofError(f"{name} must be {HASH_SIZE} bytes, got {len(value)}")


def _check_proof(proof: Sequence[bytes]) -> None:
    if not isinstance(proof, list | tuple):
        raise ProofError(f"the proof must be a list of hashes, got {type(proof).__name__}")
    for i, element in enumerate(proof):
        _check_hash(f"proof[{i}]", element)


def root_from_inclusion_proof(
    leaf_index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """Root implied by an inclusion proof (RFC 9162 2.1.3.2 steps 1-4 and the sn check).

    Useful when the root is not known yet, e.g. to compare against several checkpoints.
    """
    _check_size("leaf_index", leaf_index)
    _check_size("tree_size", tree_size)
    if leaf_index >= tree_size:
        raise ProofError(f"leaf_index {leaf_index} is not below tree_size {tree_size}")
    _check_hash("leaf_hash", leaf_hash)
    _check_proof(proof)

    fn = leaf_index
    sn = tree_size - 1
    r = bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    return r


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``leaf_index`` of the tree with ``root``.

    Raises ProofError on any failure, including hashes that are not 32 bytes.
    """
    _check_hash("root", root)
    calculated = root_from_inclusion_proof(leaf_index, tree_size, leaf_hash, proof)
    if calculated != root:
        raise ProofError("inclusion proof does not lead to the expected root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree (size2, root2) is an append-only extension of (size1, root1).

    Follows RFC 9162 2.1.4.2. A consistency proof from the empty tree is meaningless
    (every tree extends it) and is rejected, as in transparency-dev/merkle; equal sizes
    need an empty proof and identical roots, which are then only compared (as upstream,
    whose vectors include equal roots of another length); every other root must be 32
    bytes. Raises ProofError on any failure.
    """
    _check_size("size1", size1)
    _check_size("size2", size2)
    _check_proof(proof)
    if size2 < size1:
        raise ProofError(f"size2 {size2} is smaller than size1 {size1}")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree is meaningless")
    if size1 == size2:
        if proof:
            raise ProofError("sizes are equal but the proof is not empty")
        for name, root in (("root1", root1), ("root2", root2)):
            if not isinstance(root, bytes | bytearray):  # any length, as upstream; bytes
                raise ProofError(f"{name} must be bytes, got {type(root).__name__}")
        if root1 != root2:
            raise ProofError("sizes are equal but the roots differ")
        return
    _check_hash("root1", root1)
    _check_hash("root2", root2)
    if not proof:
        raise ProofError("consistency proof is empty")

    path: list[bytes] = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root is a node on the path
        path.insert(0, bytes(root1))
    fn = size1 - 1
    sn = size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the root")
    if fr != root1:
        raise ProofError("consistency proof does not lead to root1")
    if sr != root2:
        raise ProofError("consistency proof does not lead to root2")


# --------------------------------------------------------------------------------------
# Generation from stored complete-subtree hashes
# --------------------------------------------------------------------------------------


class SubtreeHashes(Protocol):
    """Read access to stored complete-subtree hashes (level 0 = leaf hashes).

    Callers are only ever asked for subtrees that are complete within the tree size
    they passed in, so a store that holds complete subtrees only is sufficient.
    """

    def get(self, level: int, index: int) -> bytes:
        """Hash of the complete subtree covering [index * 2**level, (index+1) * 2**level)."""
        ...


def _read(hashes: SubtreeHashes, level: int, index: int) -> bytes:
    """Read one stored node; a malformed store must not yield a malformed proof."""
    value = hashes.get(level, index)
    if len(value) != HASH_SIZE:
        raise ValueError(
            f"stored hash at level {level} index {index} has {len(value)} bytes, "
            f"expected {HASH_SIZE}"
        )
    return value


def _largest_power_of_two_below(n: int) -> int:
    """The split point k of RFC 6962 section 2.1 (k < n <= 2k), for n >= 2."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_hash(begin: int, end: int, hashes: SubtreeHashes) -> bytes:
    """MTH of leaves [begin, end) from at most log2(end - begin) + 1 stored reads.

    ``begin`` must be aligned to the largest power of two not above ``end - begin``,
    which holds for every subtree of the RFC 6962 recursion. The range is then the
    right fold of complete subtrees taken largest first.
    """
    parts: list[bytes] = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        if begin & ((1 << level) - 1):
            raise AssertionError(f"unaligned range start {begin} for level {level}")
        parts.append(_read(hashes, level, begin >> level))
        begin += 1 << level
    result = parts.pop()
    while parts:
        result = node_hash(parts.pop(), result)
    return result


def root_hash(size: int, hashes: SubtreeHashes) -> bytes:
    """Root of the first ``size`` leaves, from O(log size) stored complete subtrees."""
    if size < 0:
        raise ValueError(f"size must be non-negative, got {size}")
    if size == 0:
        return EMPTY_ROOT
    return _range_hash(0, size, hashes)


def inclusion_proof(index: int, size: int, hashes: SubtreeHashes) -> list[bytes]:
    """Audit path PATH(index, D[size]) of RFC 6962 2.1.1, ordered leaf to root.

    Walks the RFC recursion top-down: a left sibling is always a complete subtree
    (one read); a right sibling may be incomplete, which happens at most once since
    the walk then stays inside a complete subtree. Hence O(log size) reads.
    """
    if not 0 <= index < size:
        raise ValueError(f"index {index} is not in [0, {size})")
    proof: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        mid = lo + k
        if index < mid:
            proof.append(_range_hash(mid, hi, hashes))
            hi = mid
        else:
            level = k.bit_length() - 1
            proof.append(_read(hashes, level, lo >> level))
            lo = mid
    proof.reverse()
    return proof


def consistency_proof(size1: int, size2: int, hashes: SubtreeHashes) -> list[bytes]:
    """Consistency proof PROOF(size1, D[size2]) of RFC 6962 2.1.2, ordered leaf to root.

    Same top-down walk as inclusion_proof, so also O(log size2) reads. Requires
    0 < size1 <= size2; equal sizes give the empty proof.
    """
    if not 0 < size1 <= size2:
        raise ValueError(f"need 0 < size1 <= size2, got size1={size1} size2={size2}")
    proof: list[bytes] = []
    lo, hi, m = 0, size2, size1  # old tree covers [lo, lo + m) of the current range
    whole_old_tree = True  # the RFC's flag b: still on the path of the full old tree
    while m != hi - lo:
        k = _largest_power_of_two_below(hi - lo)
        if m <= k:
            proof.append(_range_hash(lo + k, hi, hashes))
            hi = lo + k
        else:
            level = k.bit_length() - 1
            proof.append(_read(hashes, level, lo >> level))
            lo += k
            m -= k
            whole_old_tree = False
    if not whole_old_tree:
        proof.append(_range_hash(lo, hi, hashes))
    proof.reverse()
    return proof


def append_leaves(
    size: int, hashes: SubtreeHashes, new_leaf_hashes: Sequence[bytes]
) -> list[tuple[int, int, bytes]]:
    """New complete-subtree nodes ``(level, index, hash)`` from appending leaf hashes.

    Reads the right border of the tree of ``size`` leaves once (popcount(size) reads),
    then keeps it as an in-memory stack for the whole batch, so the batch costs one
    hash per new interior node. Nodes are returned children-first (each leaf, then the
    parents it completes), so inserting them in order never stores a parent before its
    children. The new root is ``root_hash(size + len(new_leaf_hashes), ...)`` once the
    nodes are stored.
    """
    if size < 0:
        raise ValueError(f"size must be non-negative, got {size}")
    stack: list[bytes] = [
        _read(hashes, level, (size >> level) - 1)
        for level in range(size.bit_length() - 1, -1, -1)
        if (size >> level) & 1
    ]
    out: list[tuple[int, int, bytes]] = []
    emit = out.append
    push = stack.append
    pop = stack.pop
    sha256 = hashlib.sha256
    prefix = _NODE_PREFIX
    n = size
    for h in new_leaf_hashes:
        if len(h) != HASH_SIZE:
            raise ValueError(f"leaf hash for index {n} has {len(h)} bytes, expected {HASH_SIZE}")
        emit((0, n, h))
        index = n
        level = 0
        while index & 1:
            h = sha256(prefix + pop() + h).digest()
            index >>= 1
            level += 1
            emit((level, index, h))
        push(h)
        n += 1
    return out
