"""Pausing Python's cycle collector around bulk work.

Long-lived processes hold many objects (cached subjects, key sessions); each full pass
of the cycle collector walks all of them, and bulk work that allocates a lot (a batch
of commands, a rebuild of the read models) triggers such passes again and again. The
work itself makes no reference cycles that need collecting before it ends, so the
collector waits until it is over.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0  # pauses open now, in every thread
_was_enabled = False  # the collector's state when the first of them began


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cycle collection inside the block; as it was before, once every pause is over.

    Pauses may overlap across threads: the first to begin turns the collector off, the
    last to end turns it back on (if it was on before the first).
    """
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
