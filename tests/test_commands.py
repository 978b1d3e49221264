"""The strict command schema (ledger/commands.py, DESIGN 5.1): anything off is invalid_command.

Every rejection's message names the field, never the value it was given: the offending
values below are personal-looking on purpose and must not appear in any message.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.commands import COMMANDS, parse_command
from ledger.errors import LedgerError
from ledger.facade import Ledger
from tests.projection_support import cli, fresh_env

S = "11111111-1111-4111-8111-111111111111"
U = "22222222-2222-4222-8222-222222222222"
SECRET = "Søren Ærø 0101801234"

VALID: dict[str, dict[str, Any]] = {
    "register_subject": {
        "kind": "customer",
        "purpose": "customer_administration",
        "legal_basis": "contract",
    },
    "collect": {
        "subject": S,
        "category": "name",
        "value": "x",
        "purpose": "customer_administration",
        "legal_basis": "contract",
        "source": "subject",
    },
    "rectify": {"subject": S, "category": "name", "value": "y"},
    "give_consent": {
        "subject": S,
        "purpose": "marketing",
        "notice_version": "2018-05-25",
        "method": "web_form",
    },
    "withdraw_consent": {"subject": S, "purpose": "marketing"},
    "object": {"subject": S, "purpose": "marketing"},
    "restrict": {"subject": S},
    "lift_restriction": {"subject": S},
    "agree_disclosure": {
        "subject": S,
        "recipient": {"kind": "family_member", "name": "n", "country": "DK"},
        "categories": ["consumption"],
        "purpose": "customer_administration",
    },
    "revoke_disclosure_agreement": {"subject": S, "agreement": U},
    "disclose": {"subject": S, "agreement": U, "categories": ["consumption"]},
    "transfer": {"subject": S, "categories": ["orders"], "country": "SE", "recipient": "r"},
    "process": {"subject": S, "purpose": "analytics", "activity": "segmentation"},
    "start_relationship": {"subject": S, "relationship": "customer"},
    "end_relationship": {"subject": S, "relationship": "subscription"},
    "record_dialogue": {"subject": S},
    "enter_competition": {"subject": S, "competition": "c1", "competition_ends_on": "2026-06-30"},
    "place_legal_hold": {"subject": S, "reason": "dispute"},
    "release_legal_hold": {"subject": S, "hold": U},
    "open_request": {"subject": S, "right": "access"},
    "verify_identity": {"subject": S, "request": U},
    "extend_request": {"subject": S, "request": U, "reason": "complex"},
    "complete_request": {"subject": S, "request": U, "outcome": "fulfilled"},
    "erase": {"subject": S},
    "notify_subject": {"subject": S, "notice": "privacy_policy", "policy_version": "2018-05-25"},
}


def command(command_type: str, /, **changes: Any) -> dict[str, Any]:
    return {"type": command_type, **VALID[command_type], **changes}


def rejected(data: Any, *, secrets: tuple[str, ...] = (SECRET,)) -> str:
    """Parse, expect invalid_command, and check the message holds none of the secrets."""
    with pytest.raises(LedgerError) as caught:
        parse_command(data)
    error = caught.value
    assert error.code == "invalid_command"
    for secret in secrets:
        assert secret not in error.message
        assert secret.lower() not in error.message.lower()
        assert json.dumps(secret)[1:-1] not in error.message
    return error.message


def test_every_contract_command_type_has_a_valid_example() -> None:
    assert set(VALID) == set(COMMANDS)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_minimal_valid_command_parses(kind: str) -> None:
    parsed = parse_command(command(kind))
    assert parsed.type == kind
    assert parsed.occurred_at is None
    assert parsed.actor is None
    assert parsed.idempotency_key is None
    for name in VALID[kind]:
        assert name in parsed.fields


def test_common_fields_parse() -> None:
    parsed = parse_command(
        command(
            "record_dialogue",
            occurred_at="2026-03-02T11:00:00+01:00",
            actor="crm",
            idempotency_key="k-1",
        )
    )
    assert parsed.occurred_at == datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    assert parsed.actor == "crm"
    assert parsed.idempotency_key == "k-1"
    assert parse_command(command("record_dialogue", occurred_at="2026-03-02T10:00:00Z")).occurred_at


def test_optional_fields_may_be_null() -> None:
    parsed = parse_command(command("restrict", reason=None, actor=None))
    assert "reason" not in parsed.fields
    assert parsed.actor is None


@pytest.mark.parametrize(
    "data",
    [None, [], ["register_subject"], "register_subject", 42, 1.5, True, SECRET],
    ids=repr,
)
def test_a_command_must_be_an_object(data: Any) -> None:
    message = rejected(data)
    assert "object" in message


@pytest.mark.parametrize("kind", [None, "", "shred_everything", 7, ["collect"], SECRET], ids=repr)
def test_type_must_be_a_known_command(kind: Any) -> None:
    data: dict[str, Any] = {"subject": S}
    if kind is not None:
        data["type"] = kind
    message = rejected(data)
    assert "'type'" in message


@pytest.mark.parametrize("kind", sorted(VALID))
def test_unknown_field_is_rejected(kind: str) -> None:
    """Counted, not named: a field's name may be a personal value as well as its value."""
    message = rejected(command(kind, nickname=SECRET, **{SECRET: 1}))
    assert "2 field(s)" in message and f"'{kind}' does not take" in message
    assert "nickname" not in message and SECRET not in message
    assert "subject" in message or kind == "register_subject"  # what it takes is listed


def test_a_misspelt_field_is_pointed_to() -> None:
    data = command("collect")
    data["valeu"] = data.pop("value")
    message = rejected(data)
    assert "did you mean 'value'?" in message and "valeu" not in message


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (kind, name)
        for kind, spec in sorted(COMMANDS.items())
        for name, (_, req) in spec.items()
        if req
    ],
)
def test_missing_required_field_is_rejected(kind: str, name: str) -> None:
    data = command(kind)
    del data[name]
    message = rejected(data)
    assert f"'{name}'" in message
    # null counts as missing
    assert f"'{name}'" in rejected(command(kind, **{name: None}))


@pytest.mark.parametrize(
    ("kind", "changes", "field"),
    [
        # wrong types
        ("collect", {"subject": 12345}, "subject"),
        ("collect", {"category": ["name"]}, "category"),
        ("collect", {"purpose": {"p": SECRET}}, "purpose"),
        ("collect", {"category": ""}, "category"),
        ("collect", {"category": "   "}, "category"),
        ("rectify", {"category": 1}, "category"),
        ("give_consent", {"explicit": "yes"}, "explicit"),
        ("give_consent", {"explicit": 1}, "explicit"),
        ("give_consent", {"channels": "email"}, "channels"),
        ("give_consent", {"categories": "health"}, "categories"),
        ("give_consent", {"categories": [SECRET, 3]}, "categories[1]"),
        ("agree_disclosure", {"recipient": SECRET}, "recipient"),
        ("agree_disclosure", {"recipient": ["other", SECRET, "DK"]}, "recipient"),
        ("agree_disclosure", {"categories": []}, "categories"),
        ("agree_disclosure", {"categories": "consumption"}, "categories"),
        ("disclose", {"categories": []}, "categories"),
        ("transfer", {"recipient": 3}, "recipient"),
        ("process", {"activity": None, "categories": {}}, "activity"),
        ("process", {"categories": {"a": SECRET}}, "categories"),
        ("collect", {"actor": 5}, "actor"),
        ("collect", {"actor": ""}, "actor"),
        ("collect", {"idempotency_key": 5}, "idempotency_key"),
        ("collect", {"idempotency_key": ["k"]}, "idempotency_key"),
        ("register_subject", {"identifiers": SECRET}, "identifiers"),
        ("register_subject", {"identifiers": {"email": 5}}, "identifiers.email"),
        ("register_subject", {"identifiers": {"cpr": ["0101801234"]}}, "identifiers.cpr"),
        ("rectify", {"value": None}, "value"),
        ("place_legal_hold", {"reason": "x" * 10_001}, "reason"),
    ],
)
def test_wrong_type_is_rejected(kind: str, changes: dict[str, Any], field: str) -> None:
    secrets = (SECRET, "x" * 100)
    message = rejected(command(kind, **changes), secrets=secrets)
    assert f"'{field}" in message


@pytest.mark.parametrize(
    ("kind", "changes", "field"),
    [
        ("register_subject", {"kind": "Søren Ærø"}, "kind"),
        ("register_subject", {"kind": "Kunde"}, "kind"),
        ("register_subject", {"legal_basis": "vital_interest"}, "legal_basis"),
        ("register_subject", {"cpr_ground": "Søren Ærø"}, "cpr_ground"),
        ("collect", {"source": "rumour"}, "source"),
        ("collect", {"legal_basis": "Søren Ærø"}, "legal_basis"),
        ("collect", {"cpr_ground": "because"}, "cpr_ground"),
        ("give_consent", {"method": "telepathy"}, "method"),
        ("give_consent", {"channels": ["email", "fax"]}, "channels[1]"),
        ("withdraw_consent", {"channels": ["Søren Ærø"]}, "channels[0]"),
        (
            "agree_disclosure",
            {"recipient": {"kind": "friend", "name": "n", "country": "DK"}},
            "recipient.kind",
        ),
        ("process", {"channel": "pigeon"}, "channel"),
        ("start_relationship", {"relationship": "friendship"}, "relationship"),
        ("end_relationship", {"relationship": "Søren Ærø"}, "relationship"),
        ("open_request", {"right": "to_be_forgotten"}, "right"),
        ("complete_request", {"outcome": "ignored"}, "outcome"),
        ("notify_subject", {"notice": "newsletter"}, "notice"),
    ],
)
def test_bad_enum_value_is_rejected(kind: str, changes: dict[str, Any], field: str) -> None:
    secrets = tuple(v for v in _strings(changes) if v not in ("email", "n", "DK"))
    message = rejected(command(kind, **changes), secrets=secrets)
    assert f"'{field}'" in message
    assert "must be one of" in message


@pytest.mark.parametrize(
    "recipient",
    [
        {"kind": "other", "name": "n", "country": "Norway"},
        {"kind": "other", "name": "n", "country": "dk"},
        {"kind": "other", "name": "n", "country": "DNK"},
        {"kind": "other", "name": "n", "country": 45},
        {"kind": "other", "name": "n"},
        {"kind": "other", "country": "DK"},
        {"kind": "other", "name": "", "country": "DK"},
        {"kind": "other", "name": "n", "country": "DK", "phone": SECRET},
    ],
    ids=repr,
)
def test_bad_recipient_is_rejected(recipient: dict[str, Any]) -> None:
    message = rejected(command("agree_disclosure", recipient=recipient))
    assert "'recipient" in message


@pytest.mark.parametrize("country", ["Sweden", "se", "S", "SWE", "", 46])
def test_bad_country_is_rejected(country: Any) -> None:
    assert "'country'" in rejected(command("transfer", country=country))


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("collect", "subject"),
        ("register_subject", "subject"),
        ("register_subject", "provided_by"),
        ("rectify", "request"),
        ("revoke_disclosure_agreement", "agreement"),
        ("disclose", "agreement"),
        ("release_legal_hold", "hold"),
        ("verify_identity", "request"),
        ("erase", "request"),
    ],
)
@pytest.mark.parametrize(
    "bad", ["0101801234", "Søren Ærø", "11111111-1111-4111-8111-11111111111", "", "g" * 32]
)
def test_bad_uuid_is_rejected(kind: str, name: str, bad: str) -> None:
    secrets = (bad,) if len(bad) > 3 else ()
    message = rejected(command(kind, **{name: bad}), secrets=secrets)
    assert f"'{name}'" in message
    assert "UUID" in message


def test_uuid_is_normalised() -> None:
    parsed = parse_command(command("record_dialogue", subject=S.upper()))
    assert parsed.subject == S


@pytest.mark.parametrize(
    "bad",
    [
        "2026-03-02T10:00:00",  # no offset
        "02/03/2026 10:00",
        "2026-02-30T10:00:00+01:00",
        "2026-13-01T10:00:00Z",
        "yesterday",
        "Søren Ærø",
        "",
        1772445600,
    ],
    ids=repr,
)
def test_bad_instant_is_rejected(bad: Any) -> None:
    secrets = (bad,) if isinstance(bad, str) and len(bad) > 3 else ()
    message = rejected(command("record_dialogue", occurred_at=bad), secrets=secrets)
    assert "'occurred_at'" in message
    assert "'received_at'" in rejected(command("open_request", received_at=bad), secrets=secrets)


@pytest.mark.parametrize(
    "bad",
    ["2026-02-30", "30-06-2026", "2026/06/30", "next summer", "Søren Ærø", "", 20260630],
    ids=repr,
)
def test_bad_date_is_rejected(bad: Any) -> None:
    secrets = (bad,) if isinstance(bad, str) and len(bad) > 3 else ()
    message = rejected(command("enter_competition", competition_ends_on=bad), secrets=secrets)
    assert "'competition_ends_on'" in message
    assert "'valid_until'" in rejected(
        command("agree_disclosure", valid_until=bad), secrets=secrets
    )


def test_values_of_any_json_type_are_accepted_for_value() -> None:
    for value in ("x", 0, False, 2.5, 2**64 - 1, {"number": "F-1", "x": None}, [1, "ø", []]):
        assert parse_command(command("collect", value=value)).fields["value"] == value


def deep(levels: int) -> Any:
    value: Any = SECRET
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ([], "must not be empty"),
        ({}, "must not be empty"),
        (deep(32), None),
        (deep(33), "nested more than 32 levels"),
        (deep(300), "nested more than 32 levels"),
        (float("nan"), "not finite"),
        ([float("inf")], "not finite"),
        (2**64, "too large"),
        (orjson.loads("18446744073709551616"), "too large"),  # how JSON brings 2**64
        ([orjson.loads("-1e19")], "too large"),
        ({1: SECRET}, "text keys only"),
        ({SECRET}, "must be JSON"),
        (SECRET.encode(), "must be JSON"),
        ("x" * (64 * 1024), "at most 64 KiB"),
    ],
)
def test_values_the_ledger_cannot_seal_are_invalid(value: Any, says: str | None) -> None:
    """Refused before anything is sealed, with a code, never with the value; a value
    nested 300 deep once escaped as a bare TypeError from the JSON encoder."""
    if says is None:
        assert parse_command(command("collect", value=value)).fields["value"] == value
        return
    message = rejected(command("collect", value=value))
    assert says in message and SECRET not in message


@pytest.mark.parametrize(
    ("field", "kind", "text", "found"),
    [
        ("reason", "restrict", f"asked by {SECRET}@example.dk", "an e-mail address"),
        ("activity", "process", "called 010170-1234 about it", "a CPR number"),
        ("note", "complete_request", "CPR 0101701234 checked", "a CPR number"),
        ("recipient", "transfer", "ring +45 12 34 56 78", "a phone number"),
        ("reason", "place_legal_hold", "tlf. 12 34 56 78", "a phone number"),
        ("competition", "enter_competition", "0045 1234 5678", "a phone number"),
        ("policy_version", "notify_subject", "x@y.dk", "an e-mail address"),
    ],
)
def test_free_text_kept_in_the_clear_refuses_identifiers(
    field: str, kind: str, text: str, found: str
) -> None:
    message = rejected(command(kind, **{field: text}))
    assert f"field '{field}' must not hold personal data" in message and found in message
    assert text not in message and SECRET not in message


@pytest.mark.parametrize(
    "text",
    [
        "accuracy contested",
        "invoice F-2024-00001234 disputed",
        "letter of 20240115",
        "case 12345678",
        "summer-2026",
        "2018-05-25",
        "newsletter_sent",
        "order 123456-7890",  # ten digits, but no possible birth date (month 34)
    ],
)
def test_free_text_without_identifiers_is_kept(text: str) -> None:
    assert parse_command(command("restrict", reason=text)).fields["reason"] == text


def test_invalid_command_through_the_facade_writes_nothing(ledger: Ledger) -> None:
    before = ledger.max_position()
    for data in (
        None,
        {"type": "collect", "subject": S},
        command("collect", value={"cpr": SECRET}, nickname=SECRET),
        command("register_subject", identifiers={"email": SECRET, "fax": SECRET}),
        command("register_subject", subject=SECRET),
    ):
        result = ledger.execute(data)
        assert result["ok"] is False
        assert result["error"]["code"] == "invalid_command"
        assert SECRET not in json.dumps(result, ensure_ascii=False)
        assert json.dumps(SECRET)[1:-1] not in json.dumps(result)
    assert ledger.max_position() == before


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.parametrize(
    "when",
    [
        "0001-01-01T00:00:00+14:00",
        "1899-12-31T23:59:59Z",
        "1900-01-01T00:30:00+01:00",  # 1899 in UTC
        "3000-01-01T00:00:00Z",
        "9999-12-31T23:59:59-14:00",
    ],
)
def test_times_outside_1900_to_2999_are_invalid(when: str) -> None:
    """Deadlines are computed from these times for years afterwards: a time in year 1 or
    9999 was accepted and then broke every read of the read models."""
    assert "1900 and 2999" in rejected(command("record_dialogue", occurred_at=when))
    assert "1900 and 2999" in rejected(command("open_request", received_at=when))


def test_dates_outside_1900_to_2999_are_invalid() -> None:
    for day in ("0001-01-01", "1899-12-31", "3000-01-01", "9999-12-31"):
        entry = command("enter_competition", competition_ends_on=day)
        assert "1900 and 2999" in rejected(entry), day
    edge = parse_command(command("enter_competition", competition_ends_on="2999-12-31"))
    assert str(edge.fields["competition_ends_on"]) == "2999-12-31"
    first = parse_command(command("record_dialogue", occurred_at="1900-01-01T00:00:00Z"))
    assert first.occurred_at == datetime(1900, 1, 1, tzinfo=UTC)


def test_occurred_at_needs_a_time_not_only_a_date() -> None:
    from ledger.commands import parse_command
    from ledger.errors import LedgerError

    command = {"type": "record_dialogue", "subject": "11111111-1111-4111-8111-111111111111"}
    try:
        parse_command({**command, "occurred_at": "2025-03-17"})
    except LedgerError as error:
        assert error.code == "invalid_command"
    else:
        raise AssertionError("a bare date was accepted as occurred_at")
    assert parse_command({**command, "occurred_at": "2025-03-17T09:00:00+01:00"}).occurred_at


def test_exec_answers_a_line_that_is_not_utf8_and_runs_the_rest() -> None:
    """`ledger exec` reads bytes: a line that is not UTF-8 is `invalid_command` (it once
    stopped the whole file with a traceback), and the lines after it still run."""
    with fresh_env("sqlite") as env:
        register = command("register_subject", subject=S)
        dialogue = {"type": "record_dialogue", "subject": S}
        not_utf8 = b'{"type": "record_dialogue", "subject": "' + S.encode() + b'", "x": "\xff"}'
        lines = [json.dumps(register).encode(), not_utf8, json.dumps(dialogue).encode()]
        stories = Path(env["LEDGER_HOME"]).parent / "commands.jsonl"
        stories.write_bytes(b"\n".join(lines) + b"\n")
        done = cli(env, "exec", str(stories))
        results = [json.loads(line) for line in done.stdout.splitlines()]
        assert [r["ok"] for r in results] == [True, False, True], done.stderr
        assert results[1]["error"]["code"] == "invalid_command"
        assert done.returncode == 1 and "Traceback" not in done.stderr

        missing = cli(env, "exec", str(stories.with_name("nowhere.jsonl")))
        assert missing.returncode == 1 and "Traceback" not in missing.stderr
        assert "cannot read the commands file" in missing.stderr


def test_a_reveal_purpose_holding_an_identifier_is_refused(ledger: Ledger) -> None:
    """The purpose of a reveal is kept in the clear in its `DataViewed` event."""
    subject = ledger.execute(command("register_subject"))["subject"]
    before = ledger.max_position()
    with pytest.raises(LedgerError) as refused:
        ledger.subject(subject, reveal=True, purpose="asked by karen@example.dk", actor="o")
    assert refused.value.code == "invalid_command"
    assert "karen@example.dk" not in refused.value.message
    assert ledger.max_position() == before
    assert ledger.subject(subject, reveal=True, purpose="complaint handling", actor="o")
    assert ledger.max_position() == before + 1
