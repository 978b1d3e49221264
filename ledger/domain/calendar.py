"""Danish calendar arithmetic for legal deadlines.

Deadlines for answering data-subject requests are counted in calendar months
(EU Regulation 1182/71 as applied in the design) and pushed past weekends and
Danish public holidays.  Everything here is pure and works on ``date`` values in
the Copenhagen calendar; :func:`local_date` is the one bridge from timestamps. Times as
events hold them (RFC 3339 text) are written, read and compared here too (:func:`iso`,
:func:`parse_iso`, :func:`later`).
"""

from __future__ import annotations

import calendar as _stdcal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import MAXYEAR, MINYEAR, date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

__all__ = [
    "COPENHAGEN",
    "DANISH_HOLIDAYS",
    "Holiday",
    "add_months",
    "add_years",
    "danish_holidays",
    "easter_sunday",
    "is_working_day",
    "iso",
    "later",
    "local_date",
    "next_working_day",
    "parse_iso",
    "request_due_date",
]

COPENHAGEN: Final = ZoneInfo("Europe/Copenhagen")

_SATURDAY: Final = 5


def easter_sunday(year: int) -> date:
    """Return Easter Sunday (Gregorian) using the anonymous Gregorian algorithm.

    Most Danish holidays move with Easter, so this is the anchor of the table.
    """
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    l = (32 + 2 * e + 2 * i - h - k) % 7  # noqa: E741 - the algorithm's own name
    m = (a + 11 * h + 22 * l) // 451
    month, day = divmod(h + l - 7 * m + 114, 31)
    return date(year, month, day + 1)


def _fixed(month: int, day: int) -> Callable[[int], date]:
    """Rule for a holiday on the same calendar date every year."""

    def rule(year: int) -> date:
        return date(year, month, day)

    return rule


def _easter(offset: int) -> Callable[[int], date]:
    """Rule for a holiday a fixed number of days from Easter Sunday."""

    def rule(year: int) -> date:
        return easter_sunday(year) + timedelta(days=offset)

    return rule


@dataclass(frozen=True, slots=True)
class Holiday:
    """One public holiday rule, with the years (inclusive) in which it applies.

    Holidays are created and abolished by law, so each rule carries its own
    validity: deadlines computed for past years must use that year's table.
    """

    name: str
    rule: Callable[[int], date]
    valid_from: int = MINYEAR
    valid_until: int = MAXYEAR

    def applies_in(self, year: int) -> bool:
        """Say whether the holiday existed in ``year``."""
        return self.valid_from <= year <= self.valid_until


DANISH_HOLIDAYS: Final[tuple[Holiday, ...]] = (
    Holiday("Nytårsdag", _fixed(1, 1)),
    Holiday("Skærtorsdag", _easter(-3)),
    Holiday("Langfredag", _easter(-2)),
    Holiday("Påskedag", _easter(0)),
    Holiday("2. påskedag", _easter(1)),
    # Abolished by the Folketing in February 2023; last observed on 5 May 2023.
    Holiday("Store bededag", _easter(26), valid_until=2023),
    Holiday("Kristi himmelfartsdag", _easter(39)),
    Holiday("Pinsedag", _easter(49)),
    Holiday("2. pinsedag", _easter(50)),
    Holiday("Juledag", _fixed(12, 25)),
    Holiday("2. juledag", _fixed(12, 26)),
)


def danish_holidays(year: int) -> dict[date, str]:
    """Return the Danish public holidays of ``year`` as date -> name."""
    return {h.rule(year): h.name for h in DANISH_HOLIDAYS if h.applies_in(year)}


def is_working_day(d: date) -> bool:
    """Say whether ``d`` is neither a Saturday, a Sunday nor a public holiday."""
    return d.weekday() < _SATURDAY and d not in danish_holidays(d.year)


def next_working_day(d: date) -> date:
    """Return ``d`` if it is a working day, else the first working day after it."""
    while not is_working_day(d):
        d += timedelta(days=1)
    return d


def add_months(d: date, months: int) -> date:
    """Return the same day ``months`` calendar months later (or earlier if negative).

    Where the target month is too short, the result is its last day, as the
    Regulation 1182/71 rule for periods expressed in months requires.
    """
    index = d.year * 12 + (d.month - 1) + months
    year, month0 = divmod(index, 12)
    month = month0 + 1
    day = min(d.day, _stdcal.monthrange(year, month)[1])
    return date(year, month, day)


def add_years(d: date, years: int) -> date:
    """Return the same day ``years`` later; 29 February becomes 28 February if needed."""
    return add_months(d, 12 * years)


def request_due_date(received: date, months: int = 1) -> date:
    """Return the deadline for answering a request received on ``received``.

    The day of receipt does not count; the period ends at the end of the same
    date ``months`` months later (or that month's last day if it has no such
    date), and a deadline on a Saturday, Sunday or public holiday moves to the
    next working day.  An extension is ``months=3`` from the same receipt date.
    Raises ``ValueError`` for ``months < 1``: such a deadline would not fall
    after the day of receipt.
    """
    if months < 1:
        raise ValueError("a request period must be at least one month")
    return next_working_day(add_months(received, months))


_last_iso: tuple[datetime | None, str] = (None, "")


def iso(moment: datetime) -> str:
    """A moment as events hold it: RFC 3339 text with its offset.

    The last moment's text is kept: a unit of work stamps all its events with one moment
    (`isoformat` of an aware time was 3 % of a batch). The pair is read and replaced
    whole, so threads sharing it never see one moment with another's text."""
    global _last_iso
    last, text = _last_iso
    if moment is not last:
        text = moment.isoformat()
        _last_iso = (moment, text)
    return text


def parse_iso(text: str) -> datetime:
    """A moment from an event's text (`iso`)."""
    return datetime.fromisoformat(text)


def later(current: str | None, candidate: str) -> str:
    """The later of two times as events hold them, compared as instants; the aggregate,
    the read models and the audit's replay keep their anchors with it.

    Times written alike (same length, same offset) compare as text, without parsing."""
    if current is None:
        return candidate
    if len(current) == len(candidate) and current[-6:] == candidate[-6:]:
        return candidate if candidate > current else current
    return candidate if parse_iso(candidate) > parse_iso(current) else current


def local_date(ts: datetime) -> date:
    """Return the Copenhagen calendar date of an aware timestamp.

    Naive timestamps are refused: guessing their zone would shift deadlines.
    """
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("local_date requires a timezone-aware datetime")
    return ts.astimezone(COPENHAGEN).date()
