"""Registrations of new customers: commands the tests send in numbers, and the aggregate
as the domain registers one."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ledger.domain.policy import PolicyCatalogue
from ledger.domain.subject import DataSubject

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


def registered_customer(
    policy: PolicyCatalogue, *, at: datetime = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
) -> DataSubject:
    """A new customer aggregate, its registration pending (not saved)."""
    return DataSubject.register(
        uuid.uuid4(),
        policy=policy,
        kind="customer",
        purpose="customer_administration",
        legal_basis="contract",
        provided_by=None,
        occurred_at=at,
        actor=None,
    )


def ready_to_split(ledger: Any, commands: int) -> None:
    """Have the next batch of this many commands split with the second process, as a
    running service's are: the first large batch of a `Ledger` runs in one process while
    that process starts (`ledger.parallel`)."""
    from ledger.parallel import PARALLEL_FROM

    helper = ledger.app.second_process
    if commands >= PARALLEL_FROM and helper is not None:
        helper.warm_up()
