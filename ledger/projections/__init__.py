"""Read models (DESIGN 4.7): SQL tables beside the events, kept by a tracked projection.

`ReadModels` opens them for a ledger, catches them up before every query, rebuilds them
and runs them as a worker; `replay_as_of` builds them as they stood at a past moment.
"""

from ledger.projections.readmodels import ReadModels, Status
from ledger.projections.recorder import (
    PostgresReadModelRecorder,
    ReadModelRecorder,
    SQLiteReadModelRecorder,
)

__all__ = [
    "PostgresReadModelRecorder",
    "ReadModelRecorder",
    "ReadModels",
    "SQLiteReadModelRecorder",
    "Status",
]
