"""`personal_data_in` skips its searches for text without an "@" or a digit; it must find
exactly what the three searches alone find, for any text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain import screening
from ledger.domain.cpr import is_valid_cpr


def _every_search(text: str) -> str | None:
    """The same searches, each run whatever the text."""
    if screening._EMAIL.search(text):
        return "an e-mail address"
    if any(is_valid_cpr(found) for found in screening._CPR.findall(text)):
        return "a CPR number"
    if screening._PHONE.search(text):
        return "a phone number"
    return None


# text made mostly of the characters the patterns care about, so that hits are common
_PIECES = st.sampled_from(["@", ".", "-", " ", "+", "00", "dk", "a", "x", "ø", "\n"])
_TEXT = st.lists(st.one_of(_PIECES, st.integers(0, 9).map(str), st.text(max_size=3)), max_size=30)


@settings(max_examples=500)
@given(_TEXT.map("".join))
def test_the_shortcuts_find_what_every_search_finds(text: str) -> None:
    assert screening.personal_data_in(text) == _every_search(text)


def test_each_kind_is_still_found() -> None:
    assert screening.personal_data_in("skriv til kunde@example.dk") == "an e-mail address"
    assert screening.personal_data_in("cpr 010170-1234") == "a CPR number"
    assert screening.personal_data_in("ring 12 34 56 78") == "a phone number"
    assert screening.personal_data_in("newsletter_sent") is None
    assert screening.personal_data_in("invoice 2026-0042") is None
