"""Property tests: the O(log n) Merkle code in ledger.audit.merkle against the naive
RFC 6962 reference tree in ledger.audit.merkle_reference."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.audit.merkle import (
    EMPTY_ROOT,
    ProofError,
    append_leaves,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from ledger.audit.merkle_reference import (
    reference_consistency_proof,
    reference_inclusion_proof,
    reference_root,
    reference_subtree_hashes,
)

settings.register_profile(
    "merkle", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
MERKLE = settings.get_profile("merkle")

Node = tuple[int, int]


class CheckedStore:
    """Dict-backed SubtreeHashes that fails on any read of a node that is not complete
    within ``size`` and counts reads, so the O(log n) claim is tested, not assumed."""

    def __init__(self, nodes: dict[Node, bytes], size: int) -> None:
        self.nodes = nodes
        self.size = size
        self.reads = 0

    def get(self, level: int, index: int) -> bytes:
        assert level >= 0 and index >= 0, (level, index)
        assert (index + 1) << level <= self.size, (
            f"asked for incomplete node level={level} index={index} in size {self.size}"
        )
        self.reads += 1
        return self.nodes[(level, index)]


def make_leaves(n: int, seed: int = 0) -> list[bytes]:
    return [b"leaf %d/%d" % (seed, i) for i in range(n)]


def build(leaves: Sequence[bytes]) -> dict[Node, bytes]:
    """All complete nodes, built with append_leaves in one batch."""
    nodes: dict[Node, bytes] = {}
    for level, index, h in append_leaves(0, CheckedStore(nodes, 0), [leaf_hash(d) for d in leaves]):
        nodes[(level, index)] = h
    return nodes


def log_bound(size: int) -> int:
    return 2 * size.bit_length() + 1


def split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def inclusion_shape(index: int, size: int) -> tuple[bool, ...]:
    """Sides of the PATH siblings (True = left), leaf to root, per RFC 6962 2.1.1."""
    sides: list[bool] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split(hi - lo)
        if index < lo + k:
            sides.append(False)
            hi = lo + k
        else:
            sides.append(True)
            lo += k
    return tuple(reversed(sides))


def consistency_shape(size1: int, size2: int) -> tuple[bool, tuple[bool, ...]]:
    """(proof starts from root1, sides of the SUBPROOF siblings leaf to root), RFC 6962 2.1.2."""
    sides: list[bool] = []
    lo, hi, m, whole = 0, size2, size1, True
    while m != hi - lo:
        k = split(hi - lo)
        if m <= k:
            sides.append(False)
            hi = lo + k
        else:
            sides.append(True)
            lo, m, whole = lo + k, m - k, False
    return whole, tuple(reversed(sides))


def flips(value: bytes) -> list[bytes]:
    """Every single-bit change of ``value``."""
    out = []
    for i in range(len(value) * 8):
        b = bytearray(value)
        b[i // 8] ^= 1 << (i % 8)
        out.append(bytes(b))
    return out


def inclusion_ok(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> bool:
    try:
        verify_inclusion(index, size, leaf, proof, root)
    except ProofError:
        return False
    return True


def consistency_ok(size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes) -> bool:
    try:
        verify_consistency(size1, size2, proof, root1, root2)
    except ProofError:
        return False
    return True


sizes = st.one_of(st.integers(1, 300), st.integers(301, 3000))


# ---------------------------------------------------------------------------- basics


def test_hash_constants() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()
    assert root_hash(0, CheckedStore({}, 0)) == EMPTY_ROOT == reference_root([])


def test_small_trees_exhaustively() -> None:
    """Every size up to 40, every index and every older size: proofs equal the reference."""
    leaves = make_leaves(40)
    nodes = build(leaves)
    for size in range(1, 41):
        prefix = leaves[:size]
        root = reference_root(prefix)
        assert root_hash(size, CheckedStore(nodes, size)) == root
        for index in range(size):
            proof = inclusion_proof(index, size, CheckedStore(nodes, size))
            assert proof == reference_inclusion_proof(index, prefix)
            verify_inclusion(index, size, leaf_hash(prefix[index]), proof, root)
        for size1 in range(1, size + 1):
            proof = consistency_proof(size1, size, CheckedStore(nodes, size))
            assert proof == reference_consistency_proof(size1, prefix)
            verify_consistency(size1, size, proof, reference_root(leaves[:size1]), root)


@pytest.mark.parametrize("size", [2**k + d for k in range(1, 12) for d in (-1, 0, 1)])
def test_power_of_two_edges(size: int) -> None:
    leaves = make_leaves(size, seed=size)
    nodes = build(leaves)
    root = reference_root(leaves)
    assert root_hash(size, CheckedStore(nodes, size)) == root
    for index in {0, 1 % size, size // 2, size - 2 if size > 1 else 0, size - 1}:
        proof = inclusion_proof(index, size, CheckedStore(nodes, size))
        assert proof == reference_inclusion_proof(index, leaves)
        verify_inclusion(index, size, leaf_hash(leaves[index]), proof, root)
    for size1 in {1, size // 2 or 1, size - 1 or 1, size}:
        proof = consistency_proof(size1, size, CheckedStore(nodes, size))
        assert proof == reference_consistency_proof(size1, leaves)
        verify_consistency(size1, size, proof, reference_root(leaves[:size1]), root)


# ---------------------------------------------------------------- generation vs reference


@MERKLE
@given(size=sizes, seed=st.integers(0, 2**16), data=st.data())
def test_proofs_match_reference(size: int, seed: int, data: st.DataObject) -> None:
    leaves = make_leaves(size, seed)
    nodes = build(leaves)
    root = reference_root(leaves)

    store = CheckedStore(nodes, size)
    assert root_hash(size, store) == root
    assert store.reads == size.bit_count()

    for index in data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=4)):
        store = CheckedStore(nodes, size)
        proof = inclusion_proof(index, size, store)
        assert store.reads <= log_bound(size)
        assert proof == reference_inclusion_proof(index, leaves)
        verify_inclusion(index, size, leaf_hash(leaves[index]), proof, root)
        assert root_from_inclusion_proof(index, size, leaf_hash(leaves[index]), proof) == root

    for size1 in data.draw(st.lists(st.integers(1, size), min_size=1, max_size=4)):
        store = CheckedStore(nodes, size)
        proof = consistency_proof(size1, size, store)
        assert store.reads <= log_bound(size)
        assert proof == reference_consistency_proof(size1, leaves)
        verify_consistency(size1, size, proof, reference_root(leaves[:size1]), root)


@MERKLE
@given(batches=st.lists(st.integers(0, 70), max_size=10), seed=st.integers(0, 2**16))
def test_append_in_batches_equals_one_shot(batches: list[int], seed: int) -> None:
    leaves = make_leaves(sum(batches), seed)
    nodes: dict[Node, bytes] = {}
    size = 0
    for batch in batches:
        store = CheckedStore(nodes, size)
        new = append_leaves(size, store, [leaf_hash(d) for d in leaves[size : size + batch]])
        assert store.reads == size.bit_count()  # only the right border is read
        for level, index, h in new:
            assert (level, index) not in nodes
            if level:  # children-first: both children already inserted
                assert (level - 1, 2 * index) in nodes and (level - 1, 2 * index + 1) in nodes
            nodes[(level, index)] = h
        size += batch
        assert root_hash(size, CheckedStore(nodes, size)) == reference_root(leaves[:size])
    assert nodes == reference_subtree_hashes(leaves)
    assert nodes == build(leaves)


# ----------------------------------------------------------------------- tampering


@MERKLE
@given(size=st.integers(1, 300), seed=st.integers(0, 2**16), data=st.data())
def test_inclusion_tampering_fails(size: int, seed: int, data: st.DataObject) -> None:
    leaves = make_leaves(size, seed)
    nodes = build(leaves)
    root = reference_root(leaves)
    index = data.draw(st.integers(0, size - 1))
    leaf = leaf_hash(leaves[index])
    proof = inclusion_proof(index, size, CheckedStore(nodes, size))
    verify_inclusion(index, size, leaf, proof, root)

    for bad in flips(leaf):
        assert not inclusion_ok(index, size, bad, proof, root)
    for bad in flips(root):
        assert not inclusion_ok(index, size, leaf, proof, bad)
    for i, element in enumerate(proof):
        for bad in flips(element):
            assert not inclusion_ok(index, size, leaf, [*proof[:i], bad, *proof[i + 1 :]], root)
    # Wrong lengths and wrong proof lengths.
    for bad in (b"", leaf[:31], leaf + b"\x00"):
        assert not inclusion_ok(index, size, bad, proof, root)
        assert not inclusion_ok(index, size, leaf, proof, bad)
        assert not inclusion_ok(index, size, leaf, [*proof, bad], root)
        if proof:
            assert not inclusion_ok(index, size, leaf, [bad, *proof[1:]], root)
    assert not inclusion_ok(index, size, leaf, [*proof, root], root)
    assert not inclusion_ok(index, size, leaf, [root, *proof], root)
    if proof:
        assert not inclusion_ok(index, size, leaf, proof[:-1], root)
        assert not inclusion_ok(index, size, leaf, proof[1:], root)


@MERKLE
@given(size2=st.integers(2, 300), seed=st.integers(0, 2**16), data=st.data())
def test_consistency_tampering_fails(size2: int, seed: int, data: st.DataObject) -> None:
    leaves = make_leaves(size2, seed)
    nodes = build(leaves)
    size1 = data.draw(st.integers(1, size2 - 1))
    root1, root2 = reference_root(leaves[:size1]), reference_root(leaves)
    proof = consistency_proof(size1, size2, CheckedStore(nodes, size2))
    verify_consistency(size1, size2, proof, root1, root2)

    for bad in flips(root1):
        assert not consistency_ok(size1, size2, proof, bad, root2)
    for bad in flips(root2):
        assert not consistency_ok(size1, size2, proof, root1, bad)
    for i, element in enumerate(proof):
        for bad in flips(element):
            assert not consistency_ok(
                size1, size2, [*proof[:i], bad, *proof[i + 1 :]], root1, root2
            )
    for bad in (b"", root1[:31], root1 + b"\x00"):
        assert not consistency_ok(size1, size2, proof, bad, root2)
        assert not consistency_ok(size1, size2, proof, root1, bad)
        assert not consistency_ok(size1, size2, [*proof, bad], root1, root2)
        assert not consistency_ok(size1, size2, [bad, *proof[1:]], root1, root2)
    assert not consistency_ok(size1, size2, proof, root2, root1)
    assert not consistency_ok(size1, size2, [], root1, root2)
    assert not consistency_ok(size1, size2, proof[:-1], root1, root2)
    assert not consistency_ok(size1, size2, proof[1:], root1, root2)
    assert not consistency_ok(size1, size2, [*proof, root1], root1, root2)
    assert not consistency_ok(size1, size2, [root1, *proof], root1, root2)
    assert not consistency_ok(size1, size1, [], root1, root2)
    assert not consistency_ok(size2, size2, [], root1, root2)


# --------------------------------------------------------- changed sizes and indices
#
# A proof binds the *shape* of the path, not the numbers: a proof verifies for another
# (index, size) exactly when RFC 6962 gives that pair the same path shape, e.g. index 0
# in a tree of 4 and index 0 in a tree of 3 both have "two siblings on the right". The
# signed root is what binds the size. So the property tested is: a changed size or
# index verifies if and only if its path shape is the same; and within one tree size
# a changed index never verifies.


def test_size_is_bound_by_the_root_not_the_proof() -> None:
    leaves = make_leaves(4)
    nodes = build(leaves)
    proof = inclusion_proof(0, 4, CheckedStore(nodes, 4))
    root = reference_root(leaves)
    verify_inclusion(0, 3, leaf_hash(leaves[0]), proof, root)  # same shape as (0, 4)
    with pytest.raises(ProofError):
        verify_inclusion(0, 5, leaf_hash(leaves[0]), proof, root)


def _index_size_changes(index: int, size: int) -> set[tuple[int, int]]:
    changes = {
        (index - 1, size),
        (index + 1, size),
        (index ^ 1, size),
        (index ^ 2, size),
        (index, size - 1),
        (index, size + 1),
        (index, size * 2),
        (index, size // 2),
        (index, size ^ 1),
        (size - 1 - index, size),
        (index + 1, size + 1),
        (index - 1, size - 1),
        (2**64 - 1, size),
        (index, 2**64 - 1),
        (index, 0),
    }
    changes.discard((index, size))
    return changes


@MERKLE
@given(size=st.integers(1, 300), seed=st.integers(0, 2**16), data=st.data())
def test_inclusion_changed_index_or_size(size: int, seed: int, data: st.DataObject) -> None:
    leaves = make_leaves(size, seed)
    nodes = build(leaves)
    root = reference_root(leaves)
    index = data.draw(st.integers(0, size - 1))
    leaf = leaf_hash(leaves[index])
    proof = inclusion_proof(index, size, CheckedStore(nodes, size))
    shape = inclusion_shape(index, size)

    changes = _index_size_changes(index, size)
    changes |= set(
        data.draw(st.lists(st.tuples(st.integers(-1, 700), st.integers(-1, 700)), max_size=20))
    )
    changes.discard((index, size))
    for i, n in changes:
        ok = inclusion_ok(i, n, leaf, proof, root)
        if not 0 <= i < n:
            assert not ok, (i, n)
            continue
        if n == size:
            assert not ok, f"index {i} accepted in place of {index} (size {size})"
        assert ok == (inclusion_shape(i, n) == shape), (i, n)


@MERKLE
@given(size2=st.integers(1, 300), seed=st.integers(0, 2**16), data=st.data())
def test_consistency_changed_sizes(size2: int, seed: int, data: st.DataObject) -> None:
    leaves = make_leaves(size2, seed)
    nodes = build(leaves)
    size1 = data.draw(st.integers(1, size2))
    root1, root2 = reference_root(leaves[:size1]), reference_root(leaves)
    proof = consistency_proof(size1, size2, CheckedStore(nodes, size2))
    shape = consistency_shape(size1, size2)

    changes = {
        (a, b)
        for a in (size1 - 1, size1, size1 + 1, size1 * 2, size1 // 2, size1 ^ 2, size2, 0)
        for b in (size2 - 1, size2, size2 + 1, size2 * 2, size2 // 2, size2 ^ 2, size1, 0)
    }
    changes |= set(
        data.draw(st.lists(st.tuples(st.integers(-1, 700), st.integers(-1, 700)), max_size=20))
    )
    changes.discard((size1, size2))
    for m, n in changes:
        ok = consistency_ok(m, n, proof, root1, root2)
        if not 0 < m <= n:
            assert not ok, (m, n)
            continue
        assert ok == (consistency_shape(m, n) == shape), (m, n)


# ------------------------------------------------------------------- input checks


def test_verifiers_reject_bad_arguments() -> None:
    h = leaf_hash(b"x")
    for index, size in [(-1, 1), (0, -1), (0, 0), (1, 1), (True, 2)]:
        with pytest.raises(ProofError):
            verify_inclusion(index, size, h, [h], node_hash(h, h))
    with pytest.raises(ProofError):
        verify_inclusion(0, 1, "not bytes", [], h)  # type: ignore[arg-type]
    for size1, size2 in [(-1, 1), (1, -1), (0, 0), (0, 5), (2, 1)]:
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, [], h, h)
    verify_consistency(1, 1, [], h, h)
    verify_inclusion(0, 1, h, [], h)


def test_generators_reject_bad_arguments() -> None:
    nodes = build(make_leaves(5))
    store = CheckedStore(nodes, 5)
    for index, size in [(-1, 5), (5, 5), (0, 0)]:
        with pytest.raises(ValueError):
            inclusion_proof(index, size, store)
    for size1, size2 in [(0, 5), (6, 5), (-1, 5)]:
        with pytest.raises(ValueError):
            consistency_proof(size1, size2, store)
    assert consistency_proof(5, 5, store) == []
    with pytest.raises(ValueError):
        root_hash(-1, store)
    with pytest.raises(ValueError):
        append_leaves(-1, store, [])
    with pytest.raises(ValueError):
        append_leaves(5, store, [b"short"])
    broken = dict(nodes)
    broken[(0, 4)] = b"short"
    with pytest.raises(ValueError):
        root_hash(5, CheckedStore(broken, 5))


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, b"\x00" * 64])
def test_wrong_length_hashes_rejected_for_their_length(bad: bytes) -> None:
    """The 32-byte rule is checked on its own, not left to a failing root comparison."""
    leaves = make_leaves(6)
    nodes = build(leaves)
    root, root4 = reference_root(leaves), reference_root(leaves[:4])
    leaf = leaf_hash(leaves[2])
    proof = inclusion_proof(2, 6, CheckedStore(nodes, 6))
    cproof = consistency_proof(4, 6, CheckedStore(nodes, 6))
    with pytest.raises(ProofError, match="leaf_hash must be 32 bytes"):
        verify_inclusion(2, 6, bad, proof, root)
    with pytest.raises(ProofError, match="root must be 32 bytes"):
        verify_inclusion(2, 6, leaf, proof, bad)
    with pytest.raises(ProofError, match="root1 must be 32 bytes"):
        verify_consistency(4, 6, cproof, bad, root)
    with pytest.raises(ProofError, match="root2 must be 32 bytes"):
        verify_consistency(4, 6, cproof, root4, bad)
    # Equal sizes only compare the roots (as transparency-dev/merkle, whose vectors use
    # equal placeholder roots of another length): equal passes, different fails.
    verify_consistency(1, 1, [], bad, bad)
    with pytest.raises(ProofError, match="roots differ"):
        verify_consistency(1, 1, [], bad, root)
    for i in range(len(proof)):
        with pytest.raises(ProofError, match=rf"proof\[{i}\] must be 32 bytes"):
            verify_inclusion(2, 6, leaf, [*proof[:i], bad, *proof[i + 1 :]], root)
    for i in range(len(cproof)):
        with pytest.raises(ProofError, match=rf"proof\[{i}\] must be 32 bytes"):
            verify_consistency(4, 6, [*cproof[:i], bad, *cproof[i + 1 :]], root4, root)


@pytest.mark.parametrize(
    "call",
    [
        lambda: verify_consistency(3, 3, [], None, None),  # type: ignore[arg-type]
        lambda: verify_consistency(3, 3, [], "abc", "abc"),  # type: ignore[arg-type]
        lambda: verify_consistency(1, 2, None, bytes(32), bytes(32)),  # type: ignore[arg-type]
        lambda: verify_inclusion(0, 1, bytes(32), None, bytes(32)),  # type: ignore[arg-type]
    ],
    ids=["equal_sizes_no_roots", "equal_sizes_text_roots", "no_proof", "no_inclusion_proof"],
)
def test_malformed_input_is_a_proof_error(call: Any) -> None:
    """Untrusted input that is not hashes is refused with ProofError, never accepted and
    never a TypeError (equal sizes with None roots were once accepted)."""
    with pytest.raises(ProofError):
        call()
