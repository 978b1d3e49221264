"""Personal data ledger: an event-sourced, crypto-shredding, verifiable record of processing.

from ledger import Ledger
with Ledger.open() as ledger:
    result = ledger.execute({"type": "register_subject", ...})
"""

from ledger.errors import LedgerError
from ledger.facade import Ledger

__all__ = ["Ledger", "LedgerError"]
