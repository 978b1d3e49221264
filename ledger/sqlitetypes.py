"""Binding None, booleans and bytes to SQLite directly, not through the adapter protocol.

Python's `sqlite3` binds only exact int, float, str and bytearray values as they are. Any
other parameter (None, a bool, bytes) first goes through its adaptation protocol, which
looks for `__adapt__` on the protocol's type and, not finding it, builds and throws away
an AttributeError with a formatted message: about 2,000 instructions a value. A rebuild of
the read models binds several such values per event, an append one or more (the event's
state is bytes): 8 % of a rebuild's instructions went there. An adapter in the registry is
found before that search, and these return what `sqlite3` binds anyway (NULL, 0 or 1, the
same BLOB), so nothing stored changes.
"""

from __future__ import annotations

import sqlite3

# None adapts to None (bound as NULL). `dict.get` of an empty dict returns None for any
# argument, and being built in, it costs a fraction of a Python function's call: a
# rebuild binds a few million of these (most optional columns are empty).
_NOTHING: dict[object, None] = {}
_null = _NOTHING.get


def register_adapters() -> None:
    """Register the direct adapters (process-wide and idempotent: the registry is a dict).

    Called by every SQLite store of the ledger when it opens. None of these types is one of
    the four `sqlite3` binds without adapting, so registering them does not make those four
    slower (that happens only when one of the four gets an adapter).
    """
    sqlite3.register_adapter(type(None), _null)
    sqlite3.register_adapter(bool, int)
    sqlite3.register_adapter(bytes, bytes)
