"""The command schema (DESIGN 5.1): one strict parser for Python, the CLI and HTTP.

Unknown fields, missing fields and wrong types are `invalid_command`. Messages name the
field, never its value (nor an unknown field's name, which may be anything), so no
personal value can leak into an error. Free-text fields that are stored in the clear are
screened for identifiers (`ledger.domain.screening`); values to seal must be JSON the
ledger can seal.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any, NamedTuple
from uuid import UUID

import orjson

from ledger.clock import RANGE, parse_day, parse_instant
from ledger.domain import subject as subject_domain
from ledger.domain.policy import CHANNELS, LEGAL_BASES
from ledger.domain.screening import personal_data_in
from ledger.errors import LedgerError

Validator = Callable[[str, Any], Any]


def _fail(name: str, what: str) -> LedgerError:
    return LedgerError("invalid_command", f"field '{name}' {what}")


def text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(name, "must be a non-empty string")
    if len(value) > 10_000:
        raise _fail(name, "is too long")
    return value


def free_text(name: str, value: Any) -> str:
    """Text stored in the clear for good (a reason, an activity): no identifiers in it."""
    checked = text(name, value)
    found = personal_data_in(checked)
    if found is not None:
        raise _fail(name, f"must not hold personal data, and it holds what looks like {found}")
    return checked


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def uuid(name: str, value: Any) -> str:
    """A UUID in its canonical form (lower case, dashed), whatever form it came in."""
    if not isinstance(value, str):
        raise _fail(name, "must be a UUID string")
    if _CANONICAL_UUID.fullmatch(value):  # the usual case, without building a UUID
        return value
    try:
        return str(UUID(value))
    except ValueError:
        raise _fail(name, "must be a UUID") from None


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, "must be true or false")
    return value


def instant(name: str, value: Any) -> datetime:
    what = f"must be an RFC 3339 time with offset, {RANGE}"
    if not isinstance(value, str) or "T" not in value.upper():
        raise _fail(name, what)
    try:
        return parse_instant(value)
    except ValueError:
        raise _fail(name, what) from None


def day(name: str, value: Any) -> date:
    what = f"must be a date (YYYY-MM-DD) {RANGE}"
    if not isinstance(value, str):
        raise _fail(name, what)
    try:
        return parse_day(value)
    except ValueError:
        raise _fail(name, what) from None


MAX_VALUE_BYTES = 64 * 1024  # a personal value, sealed: a document belongs elsewhere
MAX_VALUE_DEPTH = 32
_JSON_KINDS = "text, a number, true or false, or a list or object of these"


def personal_value(name: str, value: Any) -> Any:
    """A value to seal: JSON, not empty, at most 64 KiB and 32 levels deep."""
    if value is None:
        raise _fail(name, "must not be null")
    blank = isinstance(value, str) and not value.strip()
    if blank or (isinstance(value, list | dict) and not value):
        raise _fail(name, "must not be empty")
    _check_json(name, value, 1)
    # JSON spends at most 6 bytes on a character (\uXXXX): short text needs no encoding
    short = isinstance(value, str) and len(value) <= MAX_VALUE_BYTES // 6
    if not short and len(orjson.dumps(value)) > MAX_VALUE_BYTES:
        raise _fail(name, f"must be at most {MAX_VALUE_BYTES // 1024} KiB as JSON")
    return value


def _check_json(name: str, value: Any, depth: int) -> None:
    if depth > MAX_VALUE_DEPTH:
        raise _fail(name, f"must not be nested more than {MAX_VALUE_DEPTH} levels deep")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise _fail(name, "holds a whole number too large for JSON (write it as text)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(name, "holds a number that is not finite")
        if not -(2**63) <= value < 2**64:
            # JSON parsers turn a whole number beyond 64 bits into an inexact float
            raise _fail(name, "holds a number too large to keep exactly (write it as text)")
    elif isinstance(value, list):
        for item in value:
            _check_json(name, item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(name, "must have text keys only")
            _check_json(name, item, depth + 1)
    else:
        raise _fail(name, f"must be JSON: {_JSON_KINDS}")


_COUNTRY = re.compile(r"^[A-Z]{2}$")


def country(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _COUNTRY.match(value):
        raise _fail(name, "must be an ISO 3166 alpha-2 country code (two capital letters)")
    return value


def one_of(*choices: str) -> Validator:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise _fail(name, f"must be one of: {', '.join(choices)}")
        return str(value)

    check.choices = choices  # type: ignore[attr-defined]
    return check


def list_of(item: Validator, *, non_empty: bool = True) -> Validator:
    def check(name: str, value: Any) -> list[Any]:
        if not isinstance(value, list) or (non_empty and not value):
            raise _fail(name, "must be a non-empty list" if non_empty else "must be a list")
        return [item(f"{name}[{i}]", v) for i, v in enumerate(value)]

    check.item = item  # type: ignore[attr-defined]
    return check


def record(spec: Mapping[str, tuple[Validator, bool]]) -> Validator:
    """A nested object with its own strict fields: {name: (validator, required)}."""

    def check(name: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _fail(name, "must be an object")
        if set(value) - set(spec):
            raise _fail(name, f"has fields it does not take (it takes: {', '.join(spec)})")
        out: dict[str, Any] = {}
        for key, (validator, required) in spec.items():
            if key in value and value[key] is not None:
                out[key] = validator(f"{name}.{key}", value[key])
            elif required:
                raise _fail(f"{name}.{key}", "is required")
        return out

    check.spec = spec  # type: ignore[attr-defined]
    return check


# The allowed values are the domain's own lists: one place to add a right or a channel.
SUBJECT_KINDS = one_of(*subject_domain.SUBJECT_KINDS)
LEGAL_BASIS = one_of(*LEGAL_BASES)
SOURCE = one_of(*subject_domain.SOURCES)
CHANNEL = one_of(*CHANNELS)
IDENTIFIERS = record(
    {
        "cpr": (text, False),
        "email": (text, False),
        "phone": (text, False),
        "customer_number": (text, False),
        "cvr": (text, False),
    }
)
RECIPIENT = record(
    {
        "kind": (
            one_of(*subject_domain.RECIPIENT_KINDS),
            True,
        ),
        "name": (text, True),
        "country": (country, True),
    }
)

REQUIRED, OPTIONAL = True, False

COMMANDS: dict[str, dict[str, tuple[Validator, bool]]] = {
    "register_subject": {
        "kind": (SUBJECT_KINDS, REQUIRED),
        "purpose": (text, REQUIRED),
        "legal_basis": (LEGAL_BASIS, REQUIRED),
        "identifiers": (IDENTIFIERS, OPTIONAL),
        "cpr_ground": (one_of(*subject_domain.CPR_GROUNDS), OPTIONAL),
        "provided_by": (uuid, OPTIONAL),
        "subject": (uuid, OPTIONAL),
    },
    "collect": {
        "subject": (uuid, REQUIRED),
        "category": (text, REQUIRED),
        "value": (personal_value, REQUIRED),
        "purpose": (text, REQUIRED),
        "legal_basis": (LEGAL_BASIS, REQUIRED),
        "source": (SOURCE, REQUIRED),
        "competition": (free_text, OPTIONAL),
        "cpr_ground": (one_of(*subject_domain.CPR_GROUNDS), OPTIONAL),
    },
    "rectify": {
        "subject": (uuid, REQUIRED),
        "category": (text, REQUIRED),
        "value": (personal_value, REQUIRED),
        "request": (uuid, OPTIONAL),
    },
    "give_consent": {
        "subject": (uuid, REQUIRED),
        "purpose": (text, REQUIRED),
        "notice_version": (free_text, REQUIRED),
        "method": (one_of(*subject_domain.CONSENT_METHODS), REQUIRED),
        "channels": (list_of(CHANNEL, non_empty=False), OPTIONAL),
        "explicit": (boolean, OPTIONAL),
        "categories": (list_of(text, non_empty=False), OPTIONAL),
    },
    "withdraw_consent": {
        "subject": (uuid, REQUIRED),
        "purpose": (text, REQUIRED),
        "channels": (list_of(CHANNEL, non_empty=False), OPTIONAL),
    },
    "object": {"subject": (uuid, REQUIRED), "purpose": (text, REQUIRED)},
    "restrict": {"subject": (uuid, REQUIRED), "reason": (free_text, OPTIONAL)},
    "lift_restriction": {"subject": (uuid, REQUIRED), "reason": (free_text, OPTIONAL)},
    "agree_disclosure": {
        "subject": (uuid, REQUIRED),
        "recipient": (RECIPIENT, REQUIRED),
        "categories": (list_of(text), REQUIRED),
        "purpose": (text, REQUIRED),
        "valid_until": (day, OPTIONAL),
    },
    "revoke_disclosure_agreement": {"subject": (uuid, REQUIRED), "agreement": (uuid, REQUIRED)},
    "disclose": {
        "subject": (uuid, REQUIRED),
        "agreement": (uuid, REQUIRED),
        "categories": (list_of(text), REQUIRED),
    },
    "transfer": {
        "subject": (uuid, REQUIRED),
        "categories": (list_of(text), REQUIRED),
        "country": (country, REQUIRED),
        "recipient": (free_text, REQUIRED),
    },
    "process": {
        "subject": (uuid, REQUIRED),
        "purpose": (text, REQUIRED),
        "activity": (free_text, REQUIRED),
        "channel": (CHANNEL, OPTIONAL),
        "categories": (list_of(text, non_empty=False), OPTIONAL),
        # beyond DESIGN 5.1: the basis the act rests on, where an objection matters (R7)
        "legal_basis": (LEGAL_BASIS, OPTIONAL),
    },
    "start_relationship": {
        "subject": (uuid, REQUIRED),
        "relationship": (one_of(*subject_domain.RELATIONSHIPS), REQUIRED),
    },
    "end_relationship": {
        "subject": (uuid, REQUIRED),
        "relationship": (one_of(*subject_domain.RELATIONSHIPS), REQUIRED),
    },
    "record_dialogue": {"subject": (uuid, REQUIRED)},
    "enter_competition": {
        "subject": (uuid, REQUIRED),
        "competition": (free_text, REQUIRED),
        "competition_ends_on": (day, REQUIRED),
    },
    "place_legal_hold": {"subject": (uuid, REQUIRED), "reason": (free_text, REQUIRED)},
    "release_legal_hold": {"subject": (uuid, REQUIRED), "hold": (uuid, REQUIRED)},
    "open_request": {
        "subject": (uuid, REQUIRED),
        "right": (
            one_of(*subject_domain.RIGHTS),
            REQUIRED,
        ),
        "received_at": (instant, OPTIONAL),
    },
    "verify_identity": {"subject": (uuid, REQUIRED), "request": (uuid, REQUIRED)},
    "extend_request": {
        "subject": (uuid, REQUIRED),
        "request": (uuid, REQUIRED),
        "reason": (free_text, REQUIRED),
    },
    "complete_request": {
        "subject": (uuid, REQUIRED),
        "request": (uuid, REQUIRED),
        "outcome": (one_of(*subject_domain.OUTCOMES), REQUIRED),
        "note": (free_text, OPTIONAL),
    },
    "erase": {"subject": (uuid, REQUIRED), "request": (uuid, OPTIONAL)},
    "notify_subject": {
        "subject": (uuid, REQUIRED),
        "notice": (one_of(*subject_domain.NOTICES), REQUIRED),
        "policy_version": (free_text, REQUIRED),
        "purpose": (text, OPTIONAL),
    },
}

COMMON: dict[str, tuple[Validator, bool]] = {
    "occurred_at": (instant, OPTIONAL),
    "actor": (text, OPTIONAL),
    "idempotency_key": (text, OPTIONAL),
}

# Every field each command takes, its own and the common ones.
_TAKES: dict[str, frozenset[str]] = {
    kind: frozenset({"type", *spec, *COMMON}) for kind, spec in COMMANDS.items()
}

# Each command's own fields and their validators, and the common fields' validators.
_VALIDATORS: dict[str, dict[str, Validator]] = {
    kind: {name: validator for name, (validator, _) in spec.items()}
    for kind, spec in COMMANDS.items()
}
_COMMON_VALIDATORS: dict[str, Validator] = {name: v for name, (v, _) in COMMON.items()}

# The fields each command requires, in the order they are reported missing.
_REQUIRED: dict[str, tuple[str, ...]] = {
    kind: tuple(name for name, (_, required) in spec.items() if required)
    for kind, spec in COMMANDS.items()
}

# Which commands an HTTP role may send (DESIGN 5.4): officers handle rights and holds.
OFFICER_COMMANDS = frozenset(
    {
        "restrict",
        "lift_restriction",
        "place_legal_hold",
        "release_legal_hold",
        "open_request",
        "verify_identity",
        "extend_request",
        "complete_request",
        "erase",
    }
)


class Command(NamedTuple):
    """A validated command. A named tuple: immutable, and made in a fraction of the time
    a frozen dataclass takes (which sets each field through `object.__setattr__`), once
    per command of every batch."""

    type: str
    fields: dict[str, Any]
    # the field `subject`, a canonical UUID (`uuid`): kept beside `fields`, where a unit
    # of work asks for it several times per command
    subject: str | None
    raw: dict[str, Any]  # as sent: what an idempotency receipt's payload hash covers
    occurred_at: datetime | None = None
    actor: str | None = None
    idempotency_key: str | None = None

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def parse_command(data: Any) -> Command:
    """Validate one command object; raises LedgerError('invalid_command') naming the field."""
    if not isinstance(data, dict):
        raise LedgerError("invalid_command", "a command must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in COMMANDS:
        raise LedgerError(
            "invalid_command",
            "field 'type' must be one of: " + ", ".join(sorted(COMMANDS)),
        )
    if not data.keys() <= _TAKES[kind]:
        unknown = set(data) - _TAKES[kind]
        raise _unknown_fields(kind, unknown, ["type", *COMMANDS[kind], *COMMON])
    for name in _REQUIRED[kind]:
        if data.get(name) is None:
            raise _fail(name, f"is required for '{kind}'")
    # only the fields given are looked at (a command names few of the optional ones)
    validators = _VALIDATORS[kind]
    fields: dict[str, Any] = {}
    common: dict[str, Any] = {}
    for name, value in data.items():
        if value is None or name == "type":
            continue
        validator = validators.get(name)
        if validator is not None:
            fields[name] = validator(name, value)
        else:
            common[name] = _COMMON_VALIDATORS[name](name, value)
    return Command(
        type=kind,
        fields=fields,
        subject=fields.get("subject"),
        occurred_at=common.get("occurred_at"),
        actor=common.get("actor"),
        idempotency_key=common.get("idempotency_key"),
        raw=data,
    )


def _unknown_fields(kind: str, unknown: set[Any], takes: list[str]) -> LedgerError:
    """Unknown fields are counted, not named (a name may be anything, a value too); a
    field they look like a misspelling of is named instead."""
    guesses = sorted(
        {
            close
            for name in unknown
            if isinstance(name, str)
            for close in difflib.get_close_matches(name, takes, n=1, cutoff=0.75)
        }
    )
    hint = f" (did you mean {', '.join(repr(g) for g in guesses)}?)" if guesses else ""
    return LedgerError(
        "invalid_command",
        f"{len(unknown)} field(s) that '{kind}' does not take{hint}; it takes: " + ", ".join(takes),
    )


def json_schema(kind: str) -> dict[str, Any]:
    """A JSON Schema of one command type (for the OpenAPI document)."""
    spec = {**COMMANDS[kind], **COMMON}
    properties: dict[str, Any] = {"type": {"const": kind}}
    required = ["type"]
    for name, (validator, needed) in spec.items():
        properties[name] = _schema_of(validator)
        if needed:
            required.append(name)
    return {
        "type": "object",
        "title": kind,
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _schema_of(validator: Validator) -> dict[str, Any]:
    if hasattr(validator, "choices"):
        return {"type": "string", "enum": list(validator.choices)}
    if hasattr(validator, "item"):
        return {"type": "array", "items": _schema_of(validator.item)}
    if hasattr(validator, "spec"):
        inner = validator.spec
        return {
            "type": "object",
            "properties": {k: _schema_of(v) for k, (v, _) in inner.items()},
            "required": [k for k, (_, req) in inner.items() if req],
            "additionalProperties": False,
        }
    formats: dict[Validator, dict[str, Any]] = {
        uuid: {"type": "string", "format": "uuid"},
        instant: {"type": "string", "format": "date-time"},
        day: {"type": "string", "format": "date"},
        boolean: {"type": "boolean"},
        country: {"type": "string", "pattern": "^[A-Z]{2}$"},
        personal_value: {
            "description": "the personal value, any JSON but null or empty, at most 64 KiB "
            "(sealed before it is stored)"
        },
        free_text: {
            "type": "string",
            "minLength": 1,
            "description": "kept in the clear: no e-mail address, CPR or phone number",
        },
    }
    return formats.get(validator, {"type": "string", "minLength": 1})
