"""Commands the tests send in numbers: registrations of new customers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

_IDENTIFIERS: dict[str, Callable[[int], str]] = {
    "email": lambda i: f"kunde{i}@example.dk",
    "phone": lambda i: f"+45{30000000 + i}",
}


def customers(count: int, *identifiers: str) -> list[dict[str, Any]]:
    """`count` registrations of new customers, each with a fresh id and the identifiers
    named ("email", "phone"), made up from its number."""
    commands = []
    for i in range(count):
        command: dict[str, Any] = {
            "type": "register_subject",
            "subject": str(uuid.uuid4()),
            "kind": "customer",
            "purpose": "customer_administration",
            "legal_basis": "contract",
        }
        if identifiers:
            command["identifiers"] = {kind: _IDENTIFIERS[kind](i) for kind in identifiers}
        commands.append(command)
    return commands
