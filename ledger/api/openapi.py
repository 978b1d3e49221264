"""The OpenAPI document's own parts: command schemas and examples, the error body, and
the statuses each route really answers with.

Commands are parsed by `ledger.commands` (one strict parser for Python, CLI and HTTP), so
the document takes its schemas from there instead of from pydantic models of our own, and
adapts them where JSON Schema can say more of what the parser does (null for an optional
field, no empty value). Errors are answered by the application's own handlers, never by
FastAPI's validation answer, so its `422 HTTPValidationError` is taken out of the document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ledger.api.tokens import NAME_PATTERN, ROLES
from ledger.commands import (
    COMMANDS,
    COMMON,
    OFFICER_COMMANDS,
    Validator,
    free_text,
    json_schema,
    personal_value,
    text,
)
from ledger.errors import ERROR_CODES, LedgerError

MAX_BATCH: Final = 1000  # commands in one batch
ERROR: Final = "Error"  # the error body's schema

_S: Final = "5f1d2c3b-8a4e-4c21-9b7d-2f6e1a0c9d11"
_REQ: Final = "0b7a3c52-1f0e-4d7e-9a51-7c2d8e4f6a10"
_AGR: Final = "9c4e2a71-5b3d-4f8e-a1c6-3d7b9e0f2a45"
_HOLD: Final = "2e8f6a13-7c4b-4d9a-b2e5-6f1a3c8d0b97"

# A valid command of every type (the subject ids are made up).
EXAMPLES: Final[dict[str, dict[str, Any]]] = {
    "register_subject": {
        "type": "register_subject",
        "subject": _S,
        "kind": "customer",
        "purpose": "customer_administration",
        "legal_basis": "contract",
        "identifiers": {"email": "karen.blixen@example.dk", "phone": "+45 45 57 10 57"},
        "occurred_at": "2025-01-06T09:30:00+01:00",
        "idempotency_key": "crm-signup-4711",
    },
    "collect": {
        "type": "collect",
        "subject": _S,
        "category": "name",
        "value": "Karen Blixen",
        "purpose": "customer_administration",
        "legal_basis": "contract",
        "source": "subject",
    },
    "rectify": {"type": "rectify", "subject": _S, "category": "address", "value": "Nytorv 2"},
    "give_consent": {
        "type": "give_consent",
        "subject": _S,
        "purpose": "marketing",
        "notice_version": "2018-05-25",
        "method": "web_form",
        "channels": ["email"],
    },
    "withdraw_consent": {
        "type": "withdraw_consent",
        "subject": _S,
        "purpose": "marketing",
        "channels": ["email"],
    },
    "object": {"type": "object", "subject": _S, "purpose": "marketing"},
    "restrict": {"type": "restrict", "subject": _S, "reason": "accuracy contested"},
    "lift_restriction": {"type": "lift_restriction", "subject": _S, "reason": "verified"},
    "agree_disclosure": {
        "type": "agree_disclosure",
        "subject": _S,
        "recipient": {"kind": "family_member", "name": "Thomas Dinesen", "country": "DK"},
        "categories": ["consumption"],
        "purpose": "customer_administration",
        "valid_until": "2026-12-31",
    },
    "revoke_disclosure_agreement": {
        "type": "revoke_disclosure_agreement",
        "subject": _S,
        "agreement": _AGR,
    },
    "disclose": {
        "type": "disclose",
        "subject": _S,
        "agreement": _AGR,
        "categories": ["consumption"],
    },
    "transfer": {
        "type": "transfer",
        "subject": _S,
        "categories": ["orders"],
        "country": "SE",
        "recipient": "Nordic Logistics AB",
    },
    "process": {
        "type": "process",
        "subject": _S,
        "purpose": "marketing",
        "activity": "newsletter_sent",
        "channel": "email",
    },
    "start_relationship": {"type": "start_relationship", "subject": _S, "relationship": "customer"},
    "end_relationship": {"type": "end_relationship", "subject": _S, "relationship": "customer"},
    "record_dialogue": {"type": "record_dialogue", "subject": _S},
    "enter_competition": {
        "type": "enter_competition",
        "subject": _S,
        "competition": "summer-2025",
        "competition_ends_on": "2025-08-31",
    },
    "place_legal_hold": {"type": "place_legal_hold", "subject": _S, "reason": "billing dispute"},
    "release_legal_hold": {"type": "release_legal_hold", "subject": _S, "hold": _HOLD},
    "open_request": {
        "type": "open_request",
        "subject": _S,
        "right": "access",
        "received_at": "2025-03-17T10:00:00+01:00",
    },
    "verify_identity": {"type": "verify_identity", "subject": _S, "request": _REQ},
    "extend_request": {
        "type": "extend_request",
        "subject": _S,
        "request": _REQ,
        "reason": "many systems to search",
    },
    "complete_request": {
        "type": "complete_request",
        "subject": _S,
        "request": _REQ,
        "outcome": "fulfilled",
    },
    "erase": {"type": "erase", "subject": _S, "request": _REQ},
    "notify_subject": {
        "type": "notify_subject",
        "subject": _S,
        "notice": "new_purpose",
        "policy_version": "2025-06-01",
        "purpose": "analytics",
    },
}


def _ref(kind: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/command_{kind}"}


# -- command schemas --------------------------------------------------------------------

TEXT_MAX: Final = 10_000  # the longest text `ledger.commands.text` takes
_NULL: Final = {"type": "null"}
_EMPTY_VALUES: Final = {
    "anyOf": [
        _NULL,
        {"type": "string", "pattern": "^\\s*$"},
        {"type": "array", "maxItems": 0},
        {"type": "object", "maxProperties": 0},
    ]
}


def _refuses(validator: Validator, value: Any) -> bool:
    """Whether the parser refuses `value` here (asked of it, so the schema cannot drift)."""
    try:
        validator("field", value)
    except LedgerError:
        return True
    return False


def _as_parsed(schema: dict[str, Any], validator: Validator, required: bool) -> dict[str, Any]:
    """`schema` (from `json_schema`) narrowed or widened to what the parser does.

    `parse_command` and nested records skip an optional field whose value is null, and
    refuse null where a field is required; a value to seal is never null nor empty.
    """
    schema = dict(schema)
    inner: Mapping[str, tuple[Validator, bool]] | None = getattr(validator, "spec", None)
    item: Validator | None = getattr(validator, "item", None)
    if inner is not None:
        schema["properties"] = {
            name: _as_parsed(schema["properties"][name], check, needed)
            for name, (check, needed) in inner.items()
        }
    elif item is not None:
        schema["items"] = _as_parsed(schema["items"], item, True)
        if _refuses(validator, []):
            schema["minItems"] = 1
    elif validator is personal_value:
        schema["not"] = _EMPTY_VALUES
    elif validator in (text, free_text):
        schema |= {"maxLength": TEXT_MAX, "pattern": "\\S"}  # not blank
    return schema if required else {"anyOf": [schema, _NULL]}


def command_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one command type, as the HTTP service takes it."""
    schema = json_schema(kind)
    spec = {**COMMANDS[kind], **COMMON}
    properties = {
        name: _as_parsed(schema["properties"][name], check, needed)
        for name, (check, needed) in spec.items()
    }
    properties["actor"] = {
        "description": "ignored over HTTP: the actor is the name of the request's token"
    }
    return {**schema, "properties": {"type": schema["properties"]["type"], **properties}}


def command_schemas() -> dict[str, Any]:
    """components/schemas: one per command type, the batch, the error body and a token."""
    schemas: dict[str, Any] = {f"command_{kind}": command_schema(kind) for kind in COMMANDS}
    schemas["CommandBatch"] = {
        "type": "object",
        "title": "batch",
        "description": "Commands executed in order in one transaction: all written, or none.",
        "properties": {
            "commands": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH,
                "items": {"oneOf": _all_refs()},
            }
        },
        "required": ["commands"],
        "additionalProperties": False,
    }
    schemas[ERROR] = ERROR_SCHEMA
    schemas["NewToken"] = TOKEN_SCHEMA
    return schemas


def _all_refs() -> list[dict[str, str]]:
    return [_ref(kind) for kind in COMMANDS]


def commands_request_body() -> dict[str, Any]:
    examples: dict[str, Any] = {
        kind: {
            "summary": kind + (" (officer)" if kind in OFFICER_COMMANDS else ""),
            "value": EXAMPLES[kind],
        }
        for kind in COMMANDS
    }
    examples["batch"] = {
        "summary": "a batch: one transaction",
        "value": {"commands": [EXAMPLES["register_subject"], EXAMPLES["collect"]]},
    }
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [*_all_refs(), {"$ref": "#/components/schemas/CommandBatch"}]},
                "examples": examples,
            }
        },
    }


# -- tokens -----------------------------------------------------------------------------

TOKEN_SCHEMA: Final = {
    "type": "object",
    "title": "new token",
    "properties": {
        "role": {"type": "string", "enum": list(ROLES)},
        "name": {
            "type": "string",
            "pattern": NAME_PATTERN,
            "description": "the actor of everything the token writes, kept in the clear: "
            "a service name or staff initials, no e-mail address, CPR or phone number",
        },
    },
    "required": ["role", "name"],
    "additionalProperties": False,
}


def token_request_body() -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/NewToken"},
                "example": {"role": "service", "name": "webshop"},
            }
        },
    }


# -- errors -----------------------------------------------------------------------------

ERROR_SCHEMA: Final = {
    "type": "object",
    "title": "error",
    "description": "Every error, whatever its status. A rejected batch adds `results`.",
    "properties": {
        "ok": {"const": False},
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "enum": sorted(ERROR_CODES)},
                "message": {
                    "type": "string",
                    "description": "names fields, never their values",
                },
            },
            "required": ["code", "message"],
            "additionalProperties": False,
        },
        "results": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["ok", "error"],
}

# What every error status means wherever it applies; a route may say more.
_MEANING: Final[dict[int, str]] = {
    400: "invalid_command: a parameter or body the service does not take",
    401: "unauthorized: no bearer token, or one that is unknown or revoked",
    403: "forbidden: the token's role may not do this",
    404: "unknown_subject",
    409: "conflict: concurrent writers kept changing the subject; retry",
    413: "invalid_command: the body is larger than the limit (1 MiB by default)",
    415: "invalid_command: a body that is not sent as application/json",
    503: "conflict: the database failed; nothing of the request was written; retry",
}


def error_responses(
    *statuses: int, public: bool = False, say: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route: `statuses`, and for a route that needs a
    token 401 and 403; 503 everywhere. `say` tells what a status means on this route."""
    wanted = {*statuses, *(say or {}), 503} | (set() if public else {401, 403})
    meaning = {**_MEANING, **(say or {})}
    return {
        status: {
            "description": meaning[status],
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR}"}}},
        }
        for status in sorted(wanted)
    }


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """The document FastAPI made, with our schemas and without its validation answer,
    which the service never sends (`RequestValidationError` is a 400 of ours)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            if "HTTPValidationError" in str(answer.get("content", "")):
                del operation["responses"]["422"]
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas.update(command_schemas())
    return document
