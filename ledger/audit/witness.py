"""The signer's own record of the newest checkpoint it has seen signed, outside the database.

The database holds the events, the tree and every checkpoint. Whoever can write to it
but does not hold the signing key could rewrite old events, rebuild the tree to match,
delete the checkpoints that bind the old tree, and have the ledger sign the result as if
it were new: the ledger would only compare it with the newest checkpoint left in the
database. So the signer keeps the newest signed checkpoint in a file of its own, beside
its key (`LEDGER_HOME/audit-witness`, readable by its owner only). It signs nothing that
does not extend that checkpoint, and `ledger audit verify` checks that the database
still holds it. The file only moves forward: a smaller checkpoint never replaces it.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ledger.audit.note import Checkpoint, NoteError, Verifier, open_checkpoint
from ledger.audit.store import AuditError

__all__ = ["WITNESS_FILE", "Witness"]

WITNESS_FILE = "audit-witness"  # in LEDGER_HOME, beside the signing key


class Witness:
    """The file holding the newest checkpoint this signer has seen signed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, verifier: Verifier, origin: str) -> Checkpoint | None:
        """The witnessed checkpoint, its signature checked; None before the first one."""
        try:
            note = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return open_checkpoint(note, verifier, origin)
        except NoteError as exc:
            raise AuditError(f"the audit witness {self.path} is not a checkpoint: {exc}") from None

    def advance(self, note: str, verifier: Verifier, origin: str) -> bool:
        """Keep `note` if it is newer (more leaves) than the one kept; True if it was kept.

        Processes that share the file take turns (an exclusive lock), so a slower one never
        puts an older checkpoint back.
        """
        try:
            checkpoint = open_checkpoint(note, verifier, origin)
        except NoteError as exc:
            raise AuditError(f"not a checkpoint this signer can vouch for: {exc}") from None
        with self._locked():
            kept = self.read(verifier, origin)
            if kept is not None and kept.size >= checkpoint.size:
                return False
            self._replace(note)
        return True

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)

    def _replace(self, note: str) -> None:
        """Write a new file beside the old one and rename it over: never half a note."""
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".witness.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(note)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
