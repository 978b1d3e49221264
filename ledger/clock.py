"""One clock for the whole ledger, so tests and `--now` can set the time."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Protocol
from zoneinfo import ZoneInfo

COPENHAGEN = ZoneInfo("Europe/Copenhagen")


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that stands still at a chosen moment (tests, `--now`)."""

    def __init__(self, moment: datetime) -> None:
        if moment.tzinfo is None:
            raise ValueError("a fixed clock needs a timezone-aware moment")
        self.moment = moment

    def now(self) -> datetime:
        return self.moment

    def set(self, moment: datetime) -> None:
        if moment.tzinfo is None:
            raise ValueError("a fixed clock needs a timezone-aware moment")
        self.moment = moment


def parse_instant(text: str) -> datetime:
    """Parse an RFC 3339 time with offset; a bare date means midnight in Copenhagen."""
    text = text.strip()
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), time(0), COPENHAGEN)
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("a time needs an offset (RFC 3339)")
    return value
