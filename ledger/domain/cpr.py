"""Danish CPR number validation.

A CPR number is personal data in its own right, so nothing in this module ever
puts the number (or any part of it) into an exception message or a log line.

Rules (from the design):

* ten digits, with at most one hyphen, and only after the sixth digit;
* digits 1-6 are the birth date as DDMMYY;
* the seventh digit fixes the century (see :func:`_century`);
* only an impossible date is rejected.  The modulus-11 check is deliberately
  not applied: since 2007 numbers are issued that fail it.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Final

__all__ = ["InvalidCPR", "cpr_birth_date", "is_valid_cpr", "normalise_cpr"]

# ASCII digits only: ``\d`` would also accept e.g. Arabic-Indic digits.
_CPR_FORMAT: Final = re.compile(r"([0-9]{6})-?([0-9]{4})")


class InvalidCPR(ValueError):
    """Raised for a malformed CPR number.

    The message describes what is wrong but never contains the number, because
    error messages end up in logs and responses where personal data must not.
    """


def normalise_cpr(value: str) -> str:
    """Return the ten digits of a CPR number, without the optional hyphen.

    The birth date is checked too, so a normalised value is always a usable
    CPR number.  Raises :class:`InvalidCPR`.
    """
    digits = _digits(value)
    _birth_date(digits)
    return digits


def cpr_birth_date(value: str) -> date:
    """Return the birth date encoded in a CPR number.  Raises :class:`InvalidCPR`."""
    return _birth_date(_digits(value))


def is_valid_cpr(value: str) -> bool:
    """Say whether ``value`` is a well-formed CPR number with a possible birth date."""
    try:
        normalise_cpr(value)
    except InvalidCPR:
        return False
    return True


def _digits(value: str) -> str:
    """Check the textual format and strip the optional hyphen."""
    match = _CPR_FORMAT.fullmatch(value)
    if match is None:
        raise InvalidCPR(
            "CPR number must be ten digits, optionally with a hyphen after the sixth digit"
        )
    return match.group(1) + match.group(2)


def _century(yy: int, seventh: int) -> int:
    """Return the century (1800, 1900 or 2000) implied by the seventh digit.

    0-3: 19YY; 4 and 9: 20YY if YY <= 36, else 19YY;
    5-8: 20YY if YY <= 57, else 18YY.
    """
    if seventh <= 3:
        return 1900
    if seventh in (4, 9):
        return 2000 if yy <= 36 else 1900
    return 2000 if yy <= 57 else 1800


def _birth_date(digits: str) -> date:
    """Decode DDMMYY plus the century digit from ten validated digits."""
    day, month, yy = int(digits[0:2]), int(digits[2:4]), int(digits[4:6])
    year = _century(yy, int(digits[6])) + yy
    try:
        return date(year, month, day)
    except ValueError:
        # ``from None``: the chained error must not be needed to explain this,
        # and the message deliberately carries no digits.
        raise InvalidCPR("CPR number does not contain a possible birth date") from None
