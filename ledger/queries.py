"""Query shapes of DESIGN 5.3: from a subject's state, and the entries that the read
models' `subject show` builds alike.

Values stay sealed unless the caller passes the subject's live keys (a reveal, which the
facade records as `DataViewed` first). A shredded value is null with `erased: true`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ledger.crypto.sealing import SealedValue, SealError, unseal
from ledger.domain.calendar import local_date, parse_iso
from ledger.domain.policy import PolicyCatalogue
from ledger.domain.retention import scope_due_date
from ledger.domain.subject import RECIPIENT_NAME, DataSubject

# Fields of events that are never shown in a history: they hold sealed values.
SEALED_FIELDS = frozenset({"value", "recipient_name"})


def _open(
    subject: DataSubject, sealed: dict[str, str], category: str, keys: Mapping[str, bytes] | None
) -> Any:
    if keys is None or subject.is_shredded(sealed):
        return None
    key = keys.get(sealed["kid"])
    if key is None:
        return None
    try:
        return unseal(
            key, SealedValue.from_dict(sealed), subject=subject.subject_id, category=category
        )
    except SealError:
        return None


# -- the entries of `subject show`, built alike from the aggregate (`subject_view`) and from
# the read models (`ledger.projections.views`) ------------------------------------------


def data_entry(item: Mapping[str, Any], value: Any, *, erased: bool) -> dict[str, Any]:
    """The newest item of a category; `value` is opened, or None."""
    return {
        "category": item["category"],
        "value": value,
        "erased": erased,
        "purpose": item["purpose"],
        "legal_basis": item["legal_basis"],
        "source": item["source"],
        "scope": item["scope"],
        "collected_at": item["collected_at"],
    }


def retention_entry(
    scope: str, deadline: str | None, *, held: bool, shredded_at: str | None
) -> dict[str, Any]:
    return {"scope": scope, "deadline": deadline, "held": held, "shredded_at": shredded_at}


def agreement_entry(agreement: Mapping[str, Any], name: Any) -> dict[str, Any]:
    """A disclosure agreement; `name` is the recipient's name opened, or None."""
    return {
        "agreement": agreement["agreement"],
        "recipient": {
            "kind": agreement["recipient_kind"],
            "name": name,
            "country": agreement["country"],
        },
        "categories": agreement["categories"],
        "purpose": agreement["purpose"],
        "valid_until": agreement["valid_until"],
        "agreed_at": agreement["agreed_at"],
        "revoked_at": agreement["revoked_at"],
    }


def request_entry(request: Mapping[str, Any], *, right: str) -> dict[str, Any]:
    """A data subject request (`right` is named `right_name` in the read model)."""
    return {
        "request": request["request"],
        "right": right,
        "received_at": request["received_at"],
        "due": request["due"],
        "status": request["status"],
        "extended": request["extended_at"] is not None,
        "outcome": request["outcome"],
        "completed_at": request["completed_at"],
    }


def subject_view(
    subject: DataSubject, policy: PolicyCatalogue, keys: Mapping[str, bytes] | None = None
) -> dict[str, Any]:
    """`ledger subject show --json` (values only with keys, i.e. on a recorded reveal)."""
    data = [
        data_entry(
            item,
            _open(subject, item["value"], item["category"], keys),
            erased=subject.is_shredded(item["value"]),
        )
        for item in subject.latest_items()
    ]
    held = bool(subject.active_holds())
    retention = []
    for scope, state in subject.scopes.items():
        deadline = scope_due_date(subject, policy, scope)
        live = [k for k in state["kids"] if k not in state["shredded"]]
        shredded_at = None if live else max(state["shredded"].values(), default=None)
        retention.append(
            retention_entry(
                scope,
                deadline.isoformat() if deadline else None,
                held=held,
                shredded_at=shredded_at,
            )
        )
    agreements = [
        agreement_entry(a, _open(subject, a["recipient_name"], RECIPIENT_NAME, keys))
        for a in subject.agreements.values()
    ]
    return {
        "subject": subject.subject_id,
        "kind": subject.kind,
        "status": subject.status,
        "registered_at": subject.registered_at,
        "provided_by": subject.provided_by,
        "relationships": list(subject.relationships.values()),
        "data": data,
        "consents": list(subject.consents.values()),
        "objections": [
            {"purpose": purpose, "objected_at": at} for purpose, at in subject.objections.items()
        ],
        "restricted": subject.restricted,
        "agreements": agreements,
        "disclosures": list(subject.disclosures),
        "transfers": list(subject.transfers),
        "holds": list(subject.holds.values()),
        "retention": retention,
        "requests": [request_entry(r, right=r["right"]) for r in subject.requests.values()],
        "erased_at": subject.erased_at,
    }


def event_summary(event: Any, *, recorded_at: str | None = None) -> dict[str, Any]:
    """One line of `subject history`: what happened, when, by whom; never a value."""
    state = {
        k: v
        for k, v in vars(event).items()
        if k not in SEALED_FIELDS and k not in ("originator_id", "timestamp", "originator_topic")
    }
    summary: dict[str, Any] = {
        "version": state.pop("originator_version"),
        "type": type(event).__name__,
        "occurred_at": state.pop("occurred_at", None),
        "recorded_at": recorded_at or event.timestamp.isoformat(),
        "actor": state.pop("actor", None),
    }
    if "value" in vars(event):
        sealed = vars(event)["value"]
        summary["sealed"] = {
            "scope": sealed["scope"],
            "kid": sealed["kid"],
            "commit": sealed["commit"],
        }
    summary["details"] = state
    return summary


def request_is_late(request: Mapping[str, Any], today_iso: str) -> bool:
    """Open past its due date, or completed after it."""
    due = str(request["due"])
    if request["status"] == "open":
        return due < today_iso
    completed = request.get("completed_at")
    return bool(completed) and occurred_date(str(completed)) > due


def occurred_date(text: str) -> str:
    return local_date(parse_iso(text)).isoformat()
