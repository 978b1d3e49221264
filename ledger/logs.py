"""Structured logs: structlog JSON lines with subject ids (pseudonyms), never a personal value.

Callers log ids, types, codes and durations only; error messages are written without
personal data by construction (`LedgerError`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import orjson
import structlog

_configured: dict[str, Any] = {}


def configure_logging(path: Path | None = None, *, stream: TextIO | None = None) -> None:
    """Send JSON lines to a file (default `LEDGER_HOME/ledger.log`) or a stream.

    Lines are rendered with orjson and written as bytes: logging stays a small part of a
    command's cost.
    """
    key = f"{path}|{id(stream)}"
    if _configured.get("key") == key:
        return
    previous = _configured.get("handle")
    if previous is not None and previous not in (sys.stdout.buffer, sys.stderr.buffer):
        previous.close()
    handle: BinaryIO
    if stream is not None:
        handle = stream.buffer  # type: ignore[attr-defined]
    elif path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # created readable by its owner only, as the key store and the signing key are
        handle = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
    else:
        handle = sys.stderr.buffer
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.BytesLoggerFactory(handle),
        cache_logger_on_first_use=False,
    )
    _configured.update(key=key, handle=handle)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
