"""The Merkle log: incremental sealing, signed checkpoints, and proofs (DESIGN 4.6).

Sealing reads the notifications after the last sealed one, in order, and appends their
leaf hashes to the stored tree in the same transaction, a chunk at a time so that a
large backlog never holds the database's write lock for long. The last chunk signs a
checkpoint, but only after checking, with a consistency proof from the stored tree, that
the new tree extends the one the previous checkpoint signed: a log whose old part was
altered is never signed again.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from ledger.audit.leaves import leaf_data
from ledger.audit.merkle import (
    HASH_SIZE,
    ProofError,
    SubtreeHashes,
    append_leaves,
    consistency_proof,
    inclusion_proof,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from ledger.audit.note import (
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    format_checkpoint,
    open_checkpoint,
    sign_note,
)
from ledger.audit.store import (
    AuditError,
    AuditStore,
    StoredCheckpoint,
    derive,
    is_stored,
    stored_coords,
)
from ledger.audit.witness import Witness

__all__ = ["AuditLog", "SealResult", "b64", "prefetched"]

CHUNK = 50_000
"""Leaves per sealing transaction: big enough to be fast, small enough to keep locks short."""

T = TypeVar("T")
_DUMMY = bytes(HASH_SIZE)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class _Wanted:
    """Records which nodes a proof computation asks for (it never depends on their values)."""

    def __init__(self) -> None:
        self.coords: list[tuple[int, int]] = []

    def get(self, level: int, index: int) -> bytes:
        self.coords.extend(stored_coords(level, index))
        return _DUMMY


class _Fetched:
    def __init__(self, nodes: dict[tuple[int, int], bytes]) -> None:
        self.nodes = nodes

    def get(self, level: int, index: int) -> bytes:
        return derive(level, index, self._read)

    def _read(self, level: int, index: int) -> bytes:
        try:
            return self.nodes[(level, index)]
        except KeyError:
            raise AuditError(
                f"the stored tree has no node at level {level} index {index}"
            ) from None


def prefetched(store: AuditStore, compute: Callable[[SubtreeHashes], T]) -> T:
    """Run a proof computation with its O(log n) node reads batched into one query.

    The walks in `merkle` choose nodes by index arithmetic alone, so a dry run with
    dummy hashes names every node the real run will read.
    """
    wanted = _Wanted()
    compute(wanted)
    return compute(_Fetched(store.get_many(wanted.coords)))


def _extends(s: AuditStore, signed: Checkpoint, size: int, root: bytes, whose: str) -> None:
    """Refuse to sign unless the tree (size, root) extends the `signed` checkpoint."""
    proof = prefetched(s, lambda h: consistency_proof(signed.size, size, h))
    try:
        verify_consistency(signed.size, size, proof, signed.root, root)
    except ProofError as exc:
        raise AuditError(
            f"refusing to sign: a tree of {size} leaves is not consistent with the "
            f"checkpoint of {signed.size} leaves{whose} ({exc})"
        ) from None


def _leaf_hashes(rows: list[tuple[int, UUID | str, int, str, bytes]]) -> list[bytes]:
    """The leaf hashes of events to seal; AuditError names an event that cannot be read."""
    sha256 = hashlib.sha256
    try:
        return [sha256(b"\x00" + leaf_data(*row)).digest() for row in rows]
    except (ValueError, TypeError) as exc:  # orjson's decode error is a ValueError
        bad = next(row for row in rows if not _readable(row))
        raise AuditError(
            f"refusing to seal: notification {bad[0]} cannot be read ({exc})"
        ) from None


def _readable(row: Any) -> bool:
    try:
        leaf_data(*row)
    except (ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class SealResult:
    added: int
    tree_size: int
    checkpoint: StoredCheckpoint | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "tree_size": self.tree_size,
            "checkpoint": None if self.checkpoint is None else self.checkpoint.note,
        }


class AuditLog:
    """One ledger's Merkle log: its store, origin and keys."""

    def __init__(
        self,
        store: AuditStore,
        verifier: Verifier,
        *,
        signer: Signer | None = None,
        origin: str | None = None,
        now: Callable[[], datetime] | None = None,
        witness: Witness | None = None,
    ) -> None:
        self.store = store
        self.verifier = verifier
        self.signer = signer
        self.origin = origin or verifier.name
        self._now = now or (lambda: datetime.now(UTC))
        self.witness = witness

    # -- sealing ----------------------------------------------------------------------

    def seal(self, *, chunk: int = CHUNK, checkpoint: bool = True) -> SealResult:
        """Add every new notification to the tree; sign a checkpoint if it grew."""
        added = 0
        signed: StoredCheckpoint | None = None
        newest: StoredCheckpoint | None = None
        while True:
            with self.store.writer() as s:
                size, last = s.tree_state()
                rows = s.event_tuples_after(last, chunk)
                if rows:
                    hashes = _leaf_hashes(rows)
                    s.insert_nodes(
                        [
                            (level, index, digest, rows[index - size][0] if level == 0 else None)
                            for level, index, digest in append_leaves(size, s, hashes)
                            if is_stored(level)
                        ]
                    )
                    size += len(rows)
                    added += len(rows)
                done = len(rows) < chunk
                if done and checkpoint:
                    signed = self._sign(s, size)
                    newest = s.latest_checkpoint()
            if done:
                if checkpoint and newest is not None and self.witness is not None:
                    # after the commit: a witness ahead of the database would refuse it
                    self.witness.advance(newest.note, self.verifier, self.origin)
                return SealResult(added, size, signed)

    def _sign(self, s: AuditStore, size: int) -> StoredCheckpoint | None:
        """Sign a checkpoint of `size` leaves if it is new and extends the previous one."""
        latest = s.latest_checkpoint()
        if size == 0 or (latest is not None and latest.tree_size == size):
            return None
        if self.signer is None:
            raise AuditError("no signing key: cannot sign a checkpoint")
        if self.signer.verifier != self.verifier:
            raise AuditError("the signing key does not match the log's verifier key")
        known = s.meta("public_key")
        if known is not None and known != self.verifier.vkey():
            raise AuditError(
                "the log was signed with another key (audit_meta.public_key); refusing to mix keys"
            )
        root = prefetched(s, lambda h: root_hash(size, h))
        self._extends_witness(s, latest, size, root)
        if latest is not None:
            if latest.tree_size > size:
                raise AuditError(
                    f"the latest checkpoint has {latest.tree_size} leaves, the tree only {size}"
                )
            try:
                previous = open_checkpoint(latest.note, self.verifier, self.origin)
            except NoteError as exc:
                raise AuditError(f"refusing to sign: the latest checkpoint is bad: {exc}") from None
            if previous.size != latest.tree_size or previous.root != latest.root:
                raise AuditError(
                    "refusing to sign: the latest checkpoint row disagrees with its note"
                )
            _extends(s, previous, size, root, "")
        assert self.signer is not None
        note = sign_note(format_checkpoint(Checkpoint(self.origin, size, root)), self.signer)
        stored = StoredCheckpoint(size, root, note, self._now().isoformat())
        s.add_checkpoint(stored)
        if known is None:
            s.set_meta("public_key", self.verifier.vkey())
            s.set_meta("origin", self.origin)
        return stored

    def _extends_witness(
        self, s: AuditStore, latest: StoredCheckpoint | None, size: int, root: bytes
    ) -> None:
        """Refuse to sign unless the tree extends the checkpoint this signer witnessed and
        the database still holds it (see `ledger.audit.witness`)."""
        witnessed = self.witness.read(self.verifier, self.origin) if self.witness else None
        if witnessed is None:
            return
        if latest is None or latest.tree_size < witnessed.size:
            raise AuditError(
                f"refusing to sign: this signer has signed a checkpoint of {witnessed.size} "
                "leaves that the database no longer holds (checkpoints were removed)"
            )
        if witnessed.size > size:
            raise AuditError(
                f"refusing to sign: the tree has {size} leaves, this signer has signed "
                f"{witnessed.size}"
            )
        _extends(s, witnessed, size, root, " this signer has signed")

    def pending(self) -> int:
        """How many notifications are not yet sealed (an upper bound on PostgreSQL gaps)."""
        with self.store.reader() as s:
            _, last = s.tree_state()
            return max(0, s.max_notification_id() - last)

    # -- reading ----------------------------------------------------------------------

    def latest(self) -> StoredCheckpoint | None:
        with self.store.reader() as s:
            return s.latest_checkpoint()

    def checkpoint(self, size: int | None = None) -> StoredCheckpoint:
        """The checkpoint of `size` leaves (default: the latest); AuditError if none."""
        with self.store.reader() as s:
            found = s.latest_checkpoint() if size is None else s.checkpoint_at(size)
        if found is None:
            raise AuditError(
                "no checkpoint yet (run `ledger audit seal`)"
                if size is None
                else f"no checkpoint of {size} leaves"
            )
        return found

    def inclusion(self, leaf_index: int, tree_size: int) -> list[bytes]:
        with self.store.reader() as s:
            return prefetched(s, lambda h: inclusion_proof(leaf_index, tree_size, h))

    def consistency(self, size1: int, size2: int) -> list[bytes]:
        with self.store.reader() as s:
            return prefetched(s, lambda h: consistency_proof(size1, size2, h))

    def prove_consistency(self, first: int, size: int | None = None) -> dict[str, Any]:
        """A consistency proof between two checkpoints (default: to the latest)."""
        with self.store.reader() as s:
            old = s.checkpoint_at(first)
            new = s.latest_checkpoint() if size is None else s.checkpoint_at(size)
            if old is None or new is None:
                raise AuditError("both sizes must be sizes of signed checkpoints")
            if old.tree_size > new.tree_size:
                raise AuditError("the first size must not be larger than the second")
            proof = prefetched(s, lambda h: consistency_proof(old.tree_size, new.tree_size, h))
        verify_consistency(old.tree_size, new.tree_size, proof, old.root, new.root)
        return {
            "size1": old.tree_size,
            "size2": new.tree_size,
            "root1": b64(old.root),
            "root2": b64(new.root),
            "proof": [b64(p) for p in proof],
            "checkpoint1": old.note,
            "checkpoint2": new.note,
        }

    def prove_events(
        self, notification_ids: Iterable[int], size: int | None = None
    ) -> tuple[StoredCheckpoint, list[dict[str, Any]]]:
        """Inclusion proofs of events against a checkpoint, each checked before it is given.

        The leaf hash is recomputed from the stored event, so a proof that verifies
        shows the event as it is stored now is the one the checkpoint signed.
        """
        wanted = list(notification_ids)
        with self.store.reader() as s:
            cp = s.latest_checkpoint() if size is None else s.checkpoint_at(size)
            if cp is None:
                raise AuditError(
                    "no checkpoint yet (run `ledger audit seal`)"
                    if size is None
                    else f"no signed checkpoint has size {size}"
                )
            indices = s.leaf_indices(wanted)
            inside = [n for n in wanted if indices.get(n, cp.tree_size) < cp.tree_size]
            found = s.events_by_id(wanted)
            rows = {n: found.get(n) for n in wanted}

            def all_proofs(h: SubtreeHashes) -> list[list[bytes]]:
                return [inclusion_proof(indices[n], cp.tree_size, h) for n in inside]

            proofs = dict(zip(inside, prefetched(s, all_proofs), strict=True))
        out: list[dict[str, Any]] = []
        for n in wanted:
            row = rows[n]
            entry: dict[str, Any] = {"notification_id": n, "leaf_index": indices.get(n)}
            if row is not None:
                entry["subject"] = str(_uuid(row.originator_id))
                entry["version"] = row.originator_version
                entry["topic"] = row.topic
            if n not in proofs or row is None:
                entry.update(included=False, verified=False)
                out.append(entry)
                continue
            digest = hashlib.sha256(b"\x00" + leaf_data(*row)).digest()
            proof = proofs[n]
            try:
                verify_inclusion(indices[n], cp.tree_size, digest, proof, cp.root)
                verified = True
            except ProofError:
                verified = False
            entry.update(
                included=True,
                leaf_hash=b64(digest),
                proof=[b64(p) for p in proof],
                verified=verified,
            )
            out.append(entry)
        return cp, out

    def prove_subject(self, subject: UUID, size: int | None = None) -> dict[str, Any]:
        """Inclusion proofs of every event of a subject, and whether versions 1..n are all in."""
        with self.store.reader() as s:
            events = s.subject_events(subject)
        if not events:
            raise AuditError(f"no events for {subject}")
        cp, proofs = self.prove_events([n for n, _, _ in events], size)
        versions = [v for _, v, _ in events]
        contiguous = versions == list(range(1, len(versions) + 1))
        unsealed = [p["version"] for p in proofs if not p["included"]]
        failed = [p["version"] for p in proofs if p["included"] and not p["verified"]]
        return {
            "subject": str(subject),
            "checkpoint": _checkpoint_dict(cp),
            "public_key": self.verifier.vkey(),
            "versions": len(versions),
            "complete": contiguous and not unsealed and not failed,
            "contiguous": contiguous,
            "unsealed": unsealed,
            "failed": failed,
            "events": proofs,
        }


def _uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)


def _checkpoint_dict(cp: StoredCheckpoint) -> dict[str, Any]:
    return {
        "tree_size": cp.tree_size,
        "root": b64(cp.root),
        "note": cp.note,
        "created_at": cp.created_at,
    }
