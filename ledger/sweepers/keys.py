"""The key reconciler (DESIGN 4.3): finish shreddings a crash left half done.

A shredding records `ScopeShredded` first and destroys the key second. If the process
dies in between, the event says the scope is gone while its key still exists. The
reconciler reads the `ScopeShredded` notifications after the last position it finished
and destroys every key they name (by key id, so a returning customer's newer generation
is never touched). Cheap enough to run at every start and before every sweep.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from eventsourcing.utils import get_topic

from ledger.domain.subject import DataSubject
from ledger.logs import get_logger

if TYPE_CHECKING:
    from ledger.facade import Ledger

log = get_logger("ledger.sweepers.keys")

SHREDDED_TOPIC = get_topic(DataSubject.ScopeShredded)
POSITION = "reconciled-position"


def reconcile_keys(ledger: Ledger) -> int:
    """Destroy every live key whose scope was recorded shredded; returns how many.

    It reads up to the log's head and remembers the head, shredding or not, so the next
    run reads only what came since: cheap enough to run after every write (the CLI's
    and the HTTP server's after-write work), so that no long-running process goes on
    finding, by its identifiers, a subject whose erasure a crash left half done.
    Notification ids commit in order (the recorder locks its table), so nothing appears
    below a head already read.
    """
    start = _position(ledger) + 1
    head = ledger.max_position()
    if head < start:
        return 0
    pending: list[tuple[str, str, list[str]]] = []
    for notification in ledger.notifications(start=start, topics=[SHREDDED_TOPIC], stop=head):
        event = ledger.app.mapper.to_domain_event(notification)
        state = vars(event)
        pending.append((str(event.originator_id), state["scope"], list(state["kids"])))
    destroyed = ledger.keystore.shred_many(pending) if pending else []
    ledger.keystore.set_secret(POSITION, struct.pack(">Q", head))
    if destroyed:
        log.warning("keys_reconciled", keys=len(destroyed))
    return len(destroyed)


def _position(ledger: Ledger) -> int:
    raw = ledger.keystore.secret(POSITION)
    return int(struct.unpack(">Q", raw)[0]) if raw else 0
