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


# The moments and days the ledger accepts from outside. Deadlines are computed up to six
# years past a day, in local time: a time in year 1 or 9999 would overflow that
# arithmetic long after the event holding it was written, and events cannot be changed.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)
RANGE = "between the years 1900 and 2999"


def parse_instant(text: str) -> datetime:
    """Parse an RFC 3339 time with offset; a bare date means midnight in Copenhagen.

    Raises ValueError for a time outside `EARLIEST`..`LATEST`."""
    text = text.strip()
    if len(text) == 10:
        return datetime.combine(parse_day(text), time(0), COPENHAGEN)
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("a time needs an offset (RFC 3339)")
    if not EARLIEST <= value < LATEST:
        raise ValueError(f"a time must lie {RANGE}")
    return value


def parse_day(text: str) -> date:
    """Parse an ISO date (YYYY-MM-DD) within the years the ledger accepts."""
    value = date.fromisoformat(text)
    if not EARLIEST.year <= value.year < LATEST.year:
        raise ValueError(f"a date must lie {RANGE}")
    return value
