"""How this ledger's events are stored: the transcoder, and the library's environment.

Events hold plain JSON values (orjson); the environment chooses the backend, the
recorder class and the aggregate cache for the configured database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from eventsourcing.persistence import Transcoder

from ledger.config import Settings


class OrjsonTranscoder(Transcoder):
    """Events hold plain JSON values; only the library's own times are datetimes.

    Those are an event's `timestamp` and, inside a snapshot's `state`, the aggregate's
    `_created_on` and `_modified_on`.
    """

    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def decode(self, data: bytes) -> Any:
        state = orjson.loads(data)
        _to_datetime(state, "timestamp")
        inner = state.get("state")
        if isinstance(inner, dict) and "topic" in state:
            _to_datetime(inner, "_created_on")
            _to_datetime(inner, "_modified_on")
        return state


def _to_datetime(state: dict[str, Any], key: str) -> None:
    value = state.get(key)
    if isinstance(value, str):
        state[key] = datetime.fromisoformat(value)


def application_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing environment for the configured database."""
    db = settings.database
    if db.backend == "sqlite":
        assert db.sqlite_path is not None
        db.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(db.sqlite_path),
            "SQLITE_LOCK_TIMEOUT": "30",
            "CREATE_TABLE": "y",
            "AGGREGATE_CACHE_MAXSIZE": "1000",
            "AGGREGATE_CACHE_FASTFORWARD": "n",
            "APPLICATION_RECORDER_TOPIC": "ledger.sqliterecorder:SQLiteEventRecorder",
        }
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": db.dbname,
        "POSTGRES_HOST": db.host,
        "POSTGRES_PORT": str(db.port),
        "POSTGRES_USER": db.user,
        "POSTGRES_PASSWORD": db.password,
        "POSTGRES_POOL_SIZE": "5",
        "POSTGRES_MAX_OVERFLOW": "10",
        "CREATE_TABLE": "y",
        "AGGREGATE_CACHE_MAXSIZE": "1000",
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "APPLICATION_RECORDER_TOPIC": "ledger.pgrecorder:CopyingPostgresRecorder",
    }
    if db.schema:
        env["POSTGRES_SCHEMA"] = db.schema
    return env
