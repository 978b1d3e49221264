"""Pausing Python's cycle collector around bulk work.

Long-lived processes hold many objects (cached subjects, key sessions); each full pass
of the cycle collector walks all of them, and bulk work that allocates a lot (a batch
of commands, a rebuild of the read models) triggers such passes again and again. The
work itself makes no reference cycles that need collecting before it ends, so the
collector waits until it is over.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cycle collection inside the block; as it was before, afterwards.

    Safe across threads: the collector is on again once the block that turned it off
    ends, whatever other blocks did meanwhile.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
