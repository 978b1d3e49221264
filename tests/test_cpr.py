"""Tests for ledger.domain.cpr: format, century rule, impossible dates, no leaks."""

from __future__ import annotations

import string
from datetime import date, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ledger.domain.cpr import InvalidCPR, cpr_birth_date, is_valid_cpr, normalise_cpr

FIRST = date(1858, 1, 1)
LAST = date(2057, 12, 31)


def century_digits(year: int) -> list[int]:
    """Every 7th digit that maps a two-digit year to ``year`` (written out from the design)."""
    yy = year % 100
    century = year - yy
    if century == 1800:
        return [5, 6, 7, 8] if yy >= 58 else []
    if century == 1900:
        return [0, 1, 2, 3] + ([4, 9] if yy >= 37 else [])
    if century == 2000:
        return ([4, 9] if yy <= 36 else []) + ([5, 6, 7, 8] if yy <= 57 else [])
    return []


def cpr_for(birth: date, seventh: int, tail: int, hyphen: bool) -> str:
    head = birth.strftime("%d%m") + f"{birth.year % 100:02d}"
    return head + ("-" if hyphen else "") + f"{seventh}{tail:03d}"


@st.composite
def valid_cprs(draw: st.DrawFn) -> tuple[str, date]:
    birth = draw(st.dates(min_value=FIRST, max_value=LAST))
    seventh = draw(st.sampled_from(century_digits(birth.year)))
    tail = draw(st.integers(0, 999))
    return cpr_for(birth, seventh, tail, draw(st.booleans())), birth


@given(valid_cprs())
def test_every_real_date_with_every_matching_century_digit_is_accepted(
    case: tuple[str, date],
) -> None:
    value, birth = case
    assert is_valid_cpr(value)
    assert cpr_birth_date(value) == birth
    assert normalise_cpr(value) == value.replace("-", "")


def test_century_table_covers_every_year_in_range() -> None:
    for year in range(FIRST.year, LAST.year + 1):
        assert century_digits(year), year


def test_all_dates_and_century_digits_exhaustively() -> None:
    # ~73,000 dates x up to six digits: cheap enough to check them all.
    d = FIRST
    while d <= LAST:
        for seventh in century_digits(d.year):
            assert cpr_birth_date(cpr_for(d, seventh, 0, False)) == d
        d += timedelta(days=1)


@pytest.mark.parametrize(
    ("yy", "seventh", "year"),
    [
        (0, 0, 1900),
        (99, 3, 1999),
        (36, 4, 2036),
        (37, 4, 1937),
        (36, 9, 2036),
        (37, 9, 1937),
        (57, 5, 2057),
        (58, 5, 1858),
        (0, 8, 2000),
        (99, 8, 1899),
    ],
)
def test_century_boundaries(yy: int, seventh: int, year: int) -> None:
    assert cpr_birth_date(f"0101{yy:02d}{seventh}000") == date(year, 1, 1)


@pytest.mark.parametrize(
    "value",
    [
        "3102801234",  # 31 February
        "3104801234",  # 31 April
        "2902011234",  # 2001 is not a leap year
        "2902014234",  # 2001 again, via digit 4
        "2902000234",  # 1900 is not a leap year (digit 0)
        "2902585234",  # 1858 is not a leap year
        "0113801234",  # month 13
        "0100801234",  # month 00
        "0001801234",  # day 00
        "3201801234",  # day 32
        "9999999999",
    ],
)
def test_impossible_dates_are_rejected(value: str) -> None:
    assert not is_valid_cpr(value)
    with pytest.raises(InvalidCPR):
        cpr_birth_date(value)
    with pytest.raises(InvalidCPR):
        normalise_cpr(value)


def test_leap_days_that_exist_are_accepted() -> None:
    assert cpr_birth_date("2902004234") == date(2000, 2, 29)
    assert cpr_birth_date("2902801234") == date(1980, 2, 29)
    assert cpr_birth_date("290260-5234") == date(1860, 2, 29)


@st.composite
def impossible_date_cprs(draw: st.DrawFn) -> str:
    day = draw(st.integers(0, 99))
    month = draw(st.integers(0, 99))
    yy = draw(st.integers(0, 99))
    seventh = draw(st.integers(0, 9))
    year = next(c + yy for c in (1800, 1900, 2000) if seventh in century_digits(c + yy))
    try:
        date(year, month, day)
    except ValueError:
        pass
    else:
        assume(False)  # a possible date: not what this strategy is for
    return f"{day:02d}{month:02d}{yy:02d}{seventh}{draw(st.integers(0, 999)):03d}"


@given(impossible_date_cprs())
def test_impossible_dates_are_rejected_property(value: str) -> None:
    assert not is_valid_cpr(value)
    with pytest.raises(InvalidCPR):
        normalise_cpr(value)


def test_modulus_11_is_not_applied() -> None:
    # Weighted sum 4*0+3*1+2*0+7*1+6*8+5*0+4*1+3*2+2*3+1*5 = 79, not divisible by 11.
    assert is_valid_cpr("0101801235")


@pytest.mark.parametrize("value", ["0101801234", "010180-1234"])
def test_accepted_formats(value: str) -> None:
    assert normalise_cpr(value) == "0101801234"
    assert cpr_birth_date(value) == date(1980, 1, 1)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "010180123",  # 9 digits
        "01018012345",  # 11 digits
        "010180-123",
        "010180-12345",
        "010180 1234",
        " 0101801234",
        "0101801234 ",
        "0101801234\n",
        "010180/1234",
        "010180.1234",
        "010180\u20131234",  # en dash
        "010180--1234",
        "0101-801234",
        "01018-01234",
        "0101801-234",
        "-0101801234",
        "0101801234-",
        "01018O1234",  # letter O
        "abcdefghij",
        "\uff10\uff11\uff10\uff11\uff18\uff10\uff11\uff12\uff13\uff14",  # full-width
        "\u0660\u0661\u0660\u0661\u0668\u0660\u0661\u0662\u0663\u0664",  # Arabic-Indic
    ],
)
def test_rejected_formats(value: str) -> None:
    assert not is_valid_cpr(value)
    with pytest.raises(InvalidCPR):
        normalise_cpr(value)
    with pytest.raises(InvalidCPR):
        cpr_birth_date(value)


def test_invalid_cpr_is_a_value_error() -> None:
    assert issubclass(InvalidCPR, ValueError)


def assert_message_leaks_nothing(exc: InvalidCPR, value: str) -> None:
    # No digit at all in the message or args, so no part of the number can be there.
    for text in (str(exc), repr(exc), *map(str, exc.args)):
        assert not any(ch in string.digits for ch in text)
    digits = "".join(ch for ch in value if ch in string.digits)
    if digits:
        assert digits not in str(exc)
    assert exc.__cause__ is None
    assert exc.__suppress_context__ or exc.__context__ is None


@given(st.text(alphabet=string.digits + "- x", min_size=0, max_size=14) | impossible_date_cprs())
def test_error_message_never_contains_the_number(value: str) -> None:
    for fn in (normalise_cpr, cpr_birth_date):
        try:
            fn(value)
        except InvalidCPR as exc:
            assert_message_leaks_nothing(exc, value)


@pytest.mark.parametrize("value", ["3102801234", "010180 1234", "01018012345"])
def test_error_message_examples(value: str) -> None:
    with pytest.raises(InvalidCPR) as info:
        normalise_cpr(value)
    assert_message_leaks_nothing(info.value, value)
