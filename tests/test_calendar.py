"""Tests for ledger.domain.calendar: holidays, month arithmetic, request deadlines."""

from __future__ import annotations

import calendar as stdcal
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.calendar import (
    COPENHAGEN,
    DANISH_HOLIDAYS,
    add_months,
    add_years,
    danish_holidays,
    easter_sunday,
    is_working_day,
    iso,
    local_date,
    next_working_day,
    request_due_date,
)

# --- Easter and the holiday table -------------------------------------------------------


@pytest.mark.parametrize(
    "easter",
    [
        date(2024, 3, 31),
        date(2025, 4, 20),
        date(2026, 4, 5),
        date(2000, 4, 23),
        date(2019, 4, 21),
        date(2008, 3, 23),
        date(2011, 4, 24),
        date(1818, 3, 22),  # earliest possible
        date(2285, 3, 22),  # earliest possible
        date(1943, 4, 25),  # latest possible
        date(2038, 4, 25),  # latest possible
    ],
)
def test_easter_known_years(easter: date) -> None:
    assert easter_sunday(easter.year) == easter
    assert danish_holidays(easter.year)[easter] == "Påskedag"


@given(st.integers(1583, 9999))
def test_easter_is_a_sunday_between_22_march_and_25_april(year: int) -> None:
    easter = easter_sunday(year)
    assert easter.weekday() == 6
    assert date(year, 3, 22) <= easter <= date(year, 4, 25)


def test_holidays_2025() -> None:
    assert danish_holidays(2025) == {
        date(2025, 1, 1): "Nytårsdag",
        date(2025, 4, 17): "Skærtorsdag",
        date(2025, 4, 18): "Langfredag",
        date(2025, 4, 20): "Påskedag",
        date(2025, 4, 21): "2. påskedag",
        date(2025, 5, 29): "Kristi himmelfartsdag",
        date(2025, 6, 8): "Pinsedag",
        date(2025, 6, 9): "2. pinsedag",
        date(2025, 12, 25): "Juledag",
        date(2025, 12, 26): "2. juledag",
    }


def test_holidays_2024_ascension_and_whitsun() -> None:
    holidays = danish_holidays(2024)
    assert holidays[date(2024, 3, 28)] == "Skærtorsdag"
    assert holidays[date(2024, 3, 29)] == "Langfredag"
    assert holidays[date(2024, 4, 1)] == "2. påskedag"
    assert holidays[date(2024, 5, 9)] == "Kristi himmelfartsdag"
    assert holidays[date(2024, 5, 19)] == "Pinsedag"
    assert holidays[date(2024, 5, 20)] == "2. pinsedag"


def test_store_bededag_until_2023_only() -> None:
    assert danish_holidays(2023)[date(2023, 5, 5)] == "Store bededag"
    assert not is_working_day(date(2023, 5, 5))
    assert "Store bededag" not in danish_holidays(2024).values()
    assert is_working_day(date(2024, 4, 26))
    assert "Store bededag" not in danish_holidays(2025).values()
    assert is_working_day(date(2025, 5, 16))
    (rule,) = (h for h in DANISH_HOLIDAYS if h.name == "Store bededag")
    assert rule.valid_until == 2023
    assert not rule.applies_in(2024)


def test_holiday_table_sizes() -> None:
    assert len(danish_holidays(2023)) == 11
    assert len(danish_holidays(2024)) == 10


@pytest.mark.parametrize(
    "d",
    [date(2025, 12, 24), date(2025, 12, 31), date(2025, 6, 5)],
)
def test_days_outside_the_table_are_working_days_when_weekdays(d: date) -> None:
    # Christmas Eve, New Year's Eve and Constitution Day are not in the design's table.
    assert d not in danish_holidays(d.year)
    assert is_working_day(d)


def test_weekends_are_not_working_days() -> None:
    assert not is_working_day(date(2025, 3, 22))  # Saturday
    assert not is_working_day(date(2025, 3, 23))  # Sunday
    assert is_working_day(date(2025, 3, 24))


def test_next_working_day() -> None:
    assert next_working_day(date(2025, 3, 24)) == date(2025, 3, 24)
    assert next_working_day(date(2025, 3, 22)) == date(2025, 3, 24)
    assert next_working_day(date(2025, 4, 17)) == date(2025, 4, 22)
    assert next_working_day(date(2025, 12, 25)) == date(2025, 12, 29)
    assert next_working_day(date(2026, 1, 1)) == date(2026, 1, 2)


# --- Month and year arithmetic ----------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (date(2025, 1, 31), 1, date(2025, 2, 28)),
        (date(2024, 1, 31), 1, date(2024, 2, 29)),
        (date(2100, 1, 31), 1, date(2100, 2, 28)),  # 2100 is not a leap year
        (date(2000, 1, 31), 1, date(2000, 2, 29)),  # 2000 is
        (date(2025, 3, 31), 1, date(2025, 4, 30)),
        (date(2025, 1, 30), 1, date(2025, 2, 28)),
        (date(2025, 1, 28), 1, date(2025, 2, 28)),
        (date(2025, 2, 28), 1, date(2025, 3, 28)),
        (date(2025, 12, 15), 1, date(2026, 1, 15)),
        (date(2025, 11, 30), 3, date(2026, 2, 28)),
        (date(2025, 3, 31), -1, date(2025, 2, 28)),
        (date(2025, 1, 15), -1, date(2024, 12, 15)),
        (date(2025, 5, 31), 0, date(2025, 5, 31)),
        (date(2023, 8, 31), 6, date(2024, 2, 29)),
        (date(2025, 1, 1), 120, date(2035, 1, 1)),
    ],
)
def test_add_months(start: date, months: int, expected: date) -> None:
    assert add_months(start, months) == expected


@given(st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31)), st.integers(-240, 240))
def test_add_months_property(start: date, months: int) -> None:
    result = add_months(start, months)
    assert (result.year * 12 + result.month) - (start.year * 12 + start.month) == months
    last = stdcal.monthrange(result.year, result.month)[1]
    assert result.day == min(start.day, last)


@pytest.mark.parametrize(
    ("start", "years", "expected"),
    [
        (date(2024, 2, 29), 1, date(2025, 2, 28)),
        (date(2024, 2, 29), 4, date(2028, 2, 29)),
        (date(2024, 2, 29), -1, date(2023, 2, 28)),
        (date(2096, 2, 29), 4, date(2100, 2, 28)),
        (date(2025, 6, 15), 5, date(2030, 6, 15)),
    ],
)
def test_add_years(start: date, years: int, expected: date) -> None:
    assert add_years(start, years) == expected


# --- Request deadlines ------------------------------------------------------------------


def test_due_date_over_easter_2025() -> None:
    assert request_due_date(date(2025, 3, 17)) == date(2025, 4, 22)


def test_extension_is_three_months_from_receipt() -> None:
    assert request_due_date(date(2025, 3, 17), months=3) == date(2025, 6, 17)
    # 2025-01-20 + 3 months is 2025-04-20, Easter Sunday; Easter Monday follows.
    assert request_due_date(date(2025, 1, 20), months=3) == date(2025, 4, 22)


@pytest.mark.parametrize(
    ("received", "months", "due"),
    [
        (date(2025, 11, 25), 1, date(2025, 12, 29)),  # Christmas Day, then 26th, weekend
        (date(2025, 11, 26), 1, date(2025, 12, 29)),  # 26 Dec, then weekend
        (date(2025, 12, 1), 1, date(2026, 1, 2)),  # New Year's Day (Thursday)
        (date(2026, 12, 1), 1, date(2027, 1, 4)),  # New Year's Day (Friday), then weekend
        (date(2025, 9, 25), 3, date(2025, 12, 29)),  # extension onto Christmas
        (date(2024, 11, 25), 1, date(2024, 12, 27)),  # Wednesday 25th, Thursday 26th
        (date(2025, 1, 31), 1, date(2025, 2, 28)),  # clamped, a Friday
        (date(2024, 1, 31), 1, date(2024, 2, 29)),  # clamped, leap year, a Thursday
        (date(2025, 3, 31), 1, date(2025, 4, 30)),  # clamped
        (date(2023, 4, 5), 1, date(2023, 5, 8)),  # Store bededag 2023, then weekend
        (date(2024, 3, 26), 1, date(2024, 4, 26)),  # was Store bededag; now a working day
        (date(2025, 4, 29), 1, date(2025, 5, 30)),  # Ascension Day 2025
        (date(2025, 5, 9), 1, date(2025, 6, 10)),  # Whit Monday 2025
        (date(2025, 3, 22), 1, date(2025, 4, 22)),  # received on a Saturday
    ],
)
def test_due_dates(received: date, months: int, due: date) -> None:
    assert request_due_date(received, months) == due


@pytest.mark.parametrize("months", [0, -1])
def test_due_date_needs_a_positive_period(months: int) -> None:
    with pytest.raises(ValueError):
        request_due_date(date(2025, 3, 17), months)


@given(
    st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31)),
    st.sampled_from([1, 3]),
)
def test_due_date_property(received: date, months: int) -> None:
    due = request_due_date(received, months)
    plain = add_months(received, months)
    assert is_working_day(due)
    assert due > received
    assert due >= plain
    day = plain
    while day < due:
        assert not is_working_day(day)
        day += timedelta(days=1)


# --- Time zones -------------------------------------------------------------------------


def test_copenhagen_zone() -> None:
    assert str(COPENHAGEN) == "Europe/Copenhagen"


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (datetime(2025, 1, 1, 22, 59, tzinfo=UTC), date(2025, 1, 1)),  # 23:59 CET
        (datetime(2025, 1, 1, 23, 0, tzinfo=UTC), date(2025, 1, 2)),  # 00:00 CET
        (datetime(2025, 6, 30, 21, 59, tzinfo=UTC), date(2025, 6, 30)),  # 23:59 CEST
        (datetime(2025, 6, 30, 22, 0, tzinfo=UTC), date(2025, 7, 1)),  # 00:00 CEST
        (datetime(2025, 3, 30, 22, 30, tzinfo=UTC), date(2025, 3, 31)),  # DST day
        (datetime(2025, 10, 26, 22, 59, tzinfo=UTC), date(2025, 10, 26)),
        (datetime(2025, 10, 26, 23, 0, tzinfo=UTC), date(2025, 10, 27)),
        (datetime(2025, 3, 17, 9, 0, tzinfo=timezone(timedelta(hours=-10))), date(2025, 3, 17)),
        (datetime(2025, 3, 17, 20, 0, tzinfo=timezone(timedelta(hours=-10))), date(2025, 3, 18)),
        (datetime(2025, 3, 18, 0, 30, tzinfo=COPENHAGEN), date(2025, 3, 18)),
    ],
)
def test_local_date(ts: datetime, expected: date) -> None:
    assert local_date(ts) == expected


def test_local_date_rejects_naive() -> None:
    with pytest.raises(ValueError):
        local_date(datetime(2025, 3, 17, 12, 0))


@given(st.lists(st.datetimes(timezones=st.sampled_from([UTC, COPENHAGEN])), min_size=1))
def test_iso_gives_each_moment_its_own_text(moments: list[datetime]) -> None:
    """`iso` keeps the last moment's text: asked in any order, with repeats, each moment
    still gets its own."""
    for moment in [*moments, *reversed(moments), *moments]:
        assert iso(moment) == moment.isoformat()
