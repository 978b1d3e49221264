"""Personal data ledger: an event-sourced, crypto-shredding, verifiable record of processing.

from ledger import Ledger
with Ledger.open() as ledger:
    result = ledger.execute({"type": "register_subject", ...})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ledger.errors import LedgerError

if TYPE_CHECKING:
    from ledger.facade import Ledger

__all__ = ["Ledger", "LedgerError"]


def __getattr__(name: str) -> Any:
    """`Ledger` is imported on first use, so that `ledger.audit.merkle` (and an auditor's
    script using it) needs nothing beyond the standard library and `cryptography`."""
    if name == "Ledger":
        from ledger.facade import Ledger

        return Ledger
    raise AttributeError(f"module 'ledger' has no attribute {name!r}")
