"""`ledger audit verify`: recompute the whole log from the stored events and check it.

One pass over the events, in notification order, inside one read transaction:
- every leaf is rebuilt from its event and compared with the stored leaf;
- the tree is rebuilt alongside (a stack of O(log n) hashes) and every node it completes
  is compared with the stored node, so the stored tree is checked entirely;
- at each checkpoint size the rebuilt root is compared with the signed root, so a
  store rewritten to match altered events (without the key) is still caught;
- each subject's versions must follow 1, 2, 3 ... (a deleted event leaves a gap).
Then every checkpoint's signature is checked, and each is shown consistent with the
one before it by a consistency proof from the stored tree.

Failures are grouped by kind; the first of each kind is kept with its place (leaf index,
notification id, subject, version) and the number of further ones is counted.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson

from ledger.audit.leaves import leaf_data
from ledger.audit.log import b64, prefetched
from ledger.audit.merkle import (
    ProofError,
    SubtreeHashes,
    consistency_proof,
    verify_consistency,
)
from ledger.audit.note import Checkpoint, NoteError, Verifier, open_checkpoint
from ledger.audit.store import AuditError, AuditStore, EventRow, is_stored

__all__ = ["Failure", "VerifyReport", "verify_store"]

Progress = Callable[[int, int], None]
_sha256 = hashlib.sha256


@dataclass
class Failure:
    """One kind of failure: where it was first seen, and how often it recurred."""

    check: str
    message: str
    leaf_index: int | None = None
    notification_id: int | None = None
    subject: str | None = None
    version: int | None = None
    tree_size: int | None = None
    level: int | None = None
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class VerifyReport:
    """What `verify` found; `ok` only if every check held."""

    events: int = 0
    leaves: int = 0
    unsealed: int = 0
    checkpoints: int = 0
    latest_size: int | None = None
    latest_root: str | None = None
    public_key: str = ""
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    _by_check: dict[str, Failure] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, failure: Failure) -> None:
        """Keep the first failure of each check (with its place), count the rest."""
        kept = self._by_check.get(failure.check)
        if kept is not None:
            kept.count += 1
            return
        self._by_check[failure.check] = failure
        self.failures.append(failure)

    @property
    def first_bad_leaf(self) -> Failure | None:
        """The failure that names the first bad leaf: an event that differs from its sealed
        leaf if any (exact), else a version gap, else any failure that names a leaf."""
        for checks in (("leaf", "event"), ("versions",), ("tree", "checkpoint")):
            named = [f for f in self.failures if f.check in checks and f.leaf_index is not None]
            if named:
                return min(named, key=lambda f: f.leaf_index or 0)
        return None

    def as_dict(self) -> dict[str, Any]:
        first = self.first_bad_leaf
        return {
            "ok": self.ok,
            "events": self.events,
            "leaves": self.leaves,
            "unsealed": self.unsealed,
            "checkpoints": self.checkpoints,
            "latest": {"tree_size": self.latest_size, "root": self.latest_root},
            "public_key": self.public_key,
            "first_bad_leaf": None if first is None else first.as_dict(),
            "failures": [f.as_dict() for f in self.failures],
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events / self.seconds) if self.seconds else None,
        }


class _Levels:
    """Cursors over the stored tree, one per level, advanced in index order."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self.cursors: dict[int, Iterator[tuple[int, bytes, int | None]]] = {}
        self.peeked: dict[int, tuple[int, bytes, int | None] | None] = {}

    def _peek(self, level: int) -> tuple[int, bytes, int | None] | None:
        if level not in self.cursors:
            self.cursors[level] = self.store.iter_level(level)
            self.peeked[level] = next(self.cursors[level], None)
        return self.peeked[level]

    def take(self, level: int, index: int) -> tuple[int, bytes, int | None] | None:
        """The stored node (level, index), skipping (and returning) nothing else."""
        head = self._peek(level)
        while head is not None and head[0] < index:
            head = self.peeked[level] = next(self.cursors[level], None)
        if head is None or head[0] != index:
            return None
        self.peeked[level] = next(self.cursors[level], None)
        return head

    def rest(self, level: int) -> tuple[int, bytes, int | None] | None:
        return self._peek(level)


def _subject(row: EventRow) -> str:
    oid = row.originator_id
    try:
        return str(oid if isinstance(oid, UUID) else UUID(oid))
    except ValueError:
        return str(oid)


def verify_store(
    store: AuditStore,
    verifier: Verifier,
    *,
    origin: str | None = None,
    progress: Progress | None = None,
    witnessed: Checkpoint | None = None,
) -> VerifyReport:
    """Check events, stored tree and checkpoints of one ledger (see the module docstring).

    `witnessed` is the newest checkpoint the signer keeps outside the database
    (`ledger.audit.witness`): the database must still hold it.
    """
    started = time.perf_counter()
    report = VerifyReport(public_key=verifier.vkey())
    origin = origin or verifier.name
    with store.reader() as s:
        size, _ = s.tree_state()
        report.leaves = size
        signed = _open_checkpoints(s, verifier, origin, report)
        if witnessed is not None and not any(
            c.size == witnessed.size and c.root == witnessed.root for c in signed
        ):
            report.fail(
                Failure(
                    "witness",
                    f"the database no longer holds the checkpoint of {witnessed.size} leaves "
                    "that its signer keeps in the audit witness: checkpoints were removed or "
                    "the log was rewritten",
                    tree_size=witnessed.size,
                )
            )
        _walk(s, size, signed, report, progress)
        _consistency(s, size, signed, report)
    report.seconds = time.perf_counter() - started
    return report


def _open_checkpoints(
    s: AuditStore, verifier: Verifier, origin: str, report: VerifyReport
) -> list[Checkpoint]:
    """Every stored checkpoint whose signature holds; the others become failures."""
    stored = s.checkpoints()
    report.checkpoints = len(stored)
    signed: list[Checkpoint] = []
    for cp in stored:
        try:
            opened = open_checkpoint(cp.note, verifier, origin)
        except NoteError as exc:
            report.fail(
                Failure(
                    "signature",
                    f"checkpoint of {cp.tree_size} leaves: {exc}",
                    tree_size=cp.tree_size,
                )
            )
            continue
        if opened.size != cp.tree_size or opened.root != cp.root:
            report.fail(
                Failure(
                    "signature",
                    f"checkpoint row of {cp.tree_size} leaves disagrees with its signed note "
                    f"({opened.size} leaves)",
                    tree_size=cp.tree_size,
                )
            )
            continue
        signed.append(opened)
    if signed:
        report.latest_size = signed[-1].size
        report.latest_root = b64(signed[-1].root)
    return signed


class _StoredTree:
    """Folds the stored leaves and compares every node they complete with the stored node.

    Checked from the stored leaves (not the rebuilt ones), so an altered event is blamed
    on the event and a broken node on the store.
    """

    def __init__(self, store: AuditStore, size: int, report: VerifyReport) -> None:
        self.levels = _Levels(store)
        self.size = size
        self.report = report
        self.stack: list[bytes] = []
        self.count = 0

    def add(self, index: int, digest: bytes) -> None:
        if index != self.count:
            self.report.fail(
                Failure("tree", f"the stored tree has no leaf {self.count}", leaf_index=self.count)
            )
            self.count = index  # carry on from where the store resumes
            self.stack = []
        node, at, level = digest, index, 0
        while at & 1 and self.stack:
            node = _sha256(b"\x01" + self.stack.pop() + node).digest()
            at >>= 1
            level += 1
            if is_stored(level):
                _compare_node(self.levels, level, at, node, index, self.report)
        self.stack.append(node)
        self.count += 1

    def leftovers(self, levels: list[int]) -> None:
        for level in sorted(levels):
            extra = self.levels.rest(level) if level > 0 else None
            if extra is not None:
                self.report.fail(
                    Failure(
                        "tree",
                        f"the stored tree has a node at level {level} index {extra[0]} that "
                        "its leaves do not complete",
                        level=level,
                    )
                )


def _walk(
    s: AuditStore,
    size: int,
    signed: list[Checkpoint],
    report: VerifyReport,
    progress: Progress | None,
) -> None:
    """Rebuild leaves and roots from the events; compare with the store and the checkpoints."""
    tree = _StoredTree(s, size, report)
    roots = {cp.size: cp.root for cp in signed}
    sizes = sorted(roots)
    next_cp = 0
    good_size = 0  # the largest checkpoint size whose root the events reproduce
    total = max(s.max_notification_id(), size)
    versions: dict[Any, int] = {}
    # While every stored leaf equals its rebuilt leaf the two trees are one: fold once.
    stack, shared = tree.stack, True
    leaf_cursor = s.iter_level(0)
    i = 0
    prefix = b"\x01"
    for row in s.iter_events():
        try:
            data = leaf_data(*row)
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            report.fail(
                Failure(
                    "event",
                    f"leaf {i}: notification {row.notification_id} cannot be read ({exc})",
                    leaf_index=i,
                    notification_id=row.notification_id,
                    subject=_subject(row),
                    version=row.originator_version,
                )
            )
            state = row.state if isinstance(row.state, bytes | bytearray | memoryview) else b""
            data = b"\xff" + bytes(state)  # an unreadable event still takes its place
        digest = _sha256(b"\x00" + data).digest()
        oid = row.originator_id
        expected_version = versions.get(oid, 0) + 1
        if row.originator_version != expected_version:
            report.fail(
                Failure(
                    "versions",
                    f"subject {_subject(row)}: version {row.originator_version} follows "
                    f"version {expected_version - 1} (notification {row.notification_id}); "
                    "an event is missing or out of order",
                    leaf_index=i,
                    notification_id=row.notification_id,
                    subject=_subject(row),
                    version=expected_version,
                )
            )
        versions[oid] = row.originator_version
        if i < size:
            stored = next(leaf_cursor, None)
            same = (
                stored is not None
                and stored[0] == i
                and stored[1] == digest
                and stored[2] == row.notification_id
            )
            if not same:
                _compare_leaf(i, row, digest, stored, report)
                if shared:  # from here on the events' tree and the stored tree differ
                    stack, shared = list(tree.stack), False
            if stored is not None:
                tree.add(stored[0], stored[1])
        elif shared:
            stack, shared = list(tree.stack), False
        if not shared:
            node = digest
            index = i
            while index & 1:
                node = _sha256(prefix + stack.pop() + node).digest()
                index >>= 1
            stack.append(node)
        i += 1
        while next_cp < len(sizes) and sizes[next_cp] <= i:
            cp_size = sizes[next_cp]
            if cp_size == i:
                root = stack[-1]
                for left in reversed(stack[:-1]):
                    root = _sha256(prefix + left + root).digest()
                if root == roots[cp_size]:
                    good_size = cp_size
                else:
                    report.fail(
                        Failure(
                            "checkpoint",
                            f"the events of leaves {good_size}..{cp_size - 1} do not give the "
                            f"root signed by the checkpoint of {cp_size} leaves",
                            leaf_index=good_size,
                            tree_size=cp_size,
                        )
                    )
            next_cp += 1
        if progress is not None and i % 10_000 == 0:
            progress(i, total)
    report.events = i
    report.unsealed = max(0, i - size)
    if i < size:
        missing = next(leaf_cursor, None)
        report.fail(
            Failure(
                "leaf",
                f"leaves {i}..{size - 1} are sealed but their events are gone "
                f"(the first commits to notification {missing[2] if missing else '?'})",
                leaf_index=i,
                notification_id=missing[2] if missing else None,
            )
        )
        while missing is not None:
            tree.add(missing[0], missing[1])
            missing = next(leaf_cursor, None)
    for cp_size in sizes[next_cp:]:
        report.fail(
            Failure(
                "checkpoint",
                f"the checkpoint of {cp_size} leaves is larger than the {i} events stored",
                tree_size=cp_size,
            )
        )
    if sizes and sizes[-1] > size:
        report.fail(
            Failure(
                "tree",
                f"the checkpoint of {sizes[-1]} leaves is larger than the stored tree ({size})",
                tree_size=sizes[-1],
            )
        )
    tree.leftovers(s.levels())
    if progress is not None:
        progress(i, max(i, total))


def _compare_leaf(
    i: int,
    row: EventRow,
    digest: bytes,
    stored: tuple[int, bytes, int | None] | None,
    report: VerifyReport,
) -> None:
    place: dict[str, Any] = {
        "leaf_index": i,
        "notification_id": row.notification_id,
        "subject": _subject(row),
        "version": row.originator_version,
    }
    if stored is None or stored[0] != i:
        report.fail(Failure("tree", f"the stored tree has no leaf {i}", **place))
        return
    _, stored_hash, stored_id = stored
    if stored_id != row.notification_id:
        if stored_id is not None and stored_id < row.notification_id:
            message = (
                f"leaf {i} commits to notification {stored_id}, which is missing from the "
                f"event store (deleted); the next event is notification {row.notification_id}"
            )
            place["notification_id"] = stored_id
            place.pop("subject")
            place.pop("version")
        else:
            message = (
                f"notification {row.notification_id} (subject {place['subject']}, version "
                f"{row.originator_version}) is not in the sealed log: leaf {i} commits to "
                f"notification {stored_id} (inserted or renumbered after sealing)"
            )
        report.fail(Failure("leaf", message, **place))
        return
    if stored_hash != digest:
        report.fail(
            Failure(
                "leaf",
                f"leaf {i}: notification {row.notification_id} (subject {place['subject']}, "
                f"version {row.originator_version}) does not match its sealed leaf hash",
                **place,
            )
        )


def _compare_node(
    levels: _Levels, level: int, index: int, node: bytes, leaf: int, report: VerifyReport
) -> None:
    stored = levels.take(level, index)
    if stored is None:
        report.fail(
            Failure(
                "tree",
                f"the stored tree has no node at level {level} index {index}",
                level=level,
            )
        )
    elif stored[1] != node:
        first = index << level
        report.fail(
            Failure(
                "tree",
                f"stored node at level {level} index {index} (leaves {first}..{leaf}) differs "
                "from the one rebuilt from the events",
                level=level,
                leaf_index=first,
            )
        )


def _consistency_of(size1: int, size2: int) -> Callable[[SubtreeHashes], list[bytes]]:
    return lambda hashes: consistency_proof(size1, size2, hashes)


def _consistency(s: AuditStore, size: int, signed: list[Checkpoint], report: VerifyReport) -> None:
    """Each signed checkpoint extends the one before it (consistency proof, stored tree)."""
    usable = [cp for cp in signed if cp.size <= size]
    for old, new in itertools.pairwise(usable):
        try:
            proof = prefetched(s, _consistency_of(old.size, new.size))
            verify_consistency(old.size, new.size, proof, old.root, new.root)
        except (ProofError, AuditError, ValueError) as exc:
            report.fail(
                Failure(
                    "consistency",
                    f"the checkpoint of {new.size} leaves is not consistent with the checkpoint "
                    f"of {old.size} leaves ({exc})",
                    tree_size=new.size,
                )
            )
