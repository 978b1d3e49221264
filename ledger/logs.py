"""Structured logs: structlog JSON lines with subject ids (pseudonyms), never a personal value.

Callers log ids, types, codes and durations only; error messages are written without
personal data by construction (`LedgerError`).
"""

from __future__ import annotations

import contextlib
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
        # BytesLogger calls only write and flush
        logger_factory=structlog.BytesLoggerFactory(_Forgiving(handle)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    _configured.update(key=key, handle=handle)


class _Forgiving:
    """A log file whose write errors (a full disk) never fail the work being logged: a
    command written to the event store must not be reported as failed, nor a server's
    writer thread die, because its log line could not be written. The first lost line is
    reported on standard error; the count of lost lines is kept."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.lost = 0

    def write(self, data: bytes) -> None:
        try:
            self.handle.write(data)
        except (OSError, ValueError) as exc:
            self._lose(exc)

    def flush(self) -> None:
        try:
            self.handle.flush()
        except (OSError, ValueError) as exc:
            self._lose(exc)

    def _lose(self, exc: Exception) -> None:
        self.lost += 1
        if self.lost == 1:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"ledger: log lines are being lost ({type(exc).__name__})\n")


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
