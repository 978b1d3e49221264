"""The OpenAPI document's command part: a schema and an example for every command type.

Commands are parsed by `ledger.commands` (one strict parser for Python, CLI and HTTP), so
the document takes its schemas from there instead of from pydantic models of our own.
"""

from __future__ import annotations

from typing import Any, Final

from ledger.commands import COMMANDS, OFFICER_COMMANDS, json_schema

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


def command_schemas() -> dict[str, Any]:
    """components/schemas: one per command type, and the batch."""
    schemas: dict[str, Any] = {f"command_{kind}": json_schema(kind) for kind in COMMANDS}
    schemas["CommandBatch"] = {
        "type": "object",
        "title": "batch",
        "description": "Commands executed in order in one transaction: all written, or none.",
        "properties": {
            "commands": {"type": "array", "minItems": 1, "items": {"oneOf": _all_refs()}}
        },
        "required": ["commands"],
        "additionalProperties": False,
    }
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
