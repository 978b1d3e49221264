"""`subject show` (DESIGN 5.3) from the read models: the same keys, order and values as
`ledger.queries.subject_view` builds from the aggregate, without replaying any event.

Values are opened only with the keys a caller passes (a recorded reveal); a shredded or
unopenable value is null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ledger.crypto.sealing import SealedValue, SealError, unseal
from ledger.domain.subject import RECIPIENT_NAME
from ledger.errors import LedgerError
from ledger.projections.recorder import Cursor, decode_row
from ledger.projections.schema import (
    AGREEMENTS,
    CONSENTS,
    DATA_ITEMS,
    DISCLOSURES,
    HOLDS,
    OBJECTIONS,
    RELATIONSHIPS,
    REQUESTS,
    SCOPES,
    SUBJECTS,
    TRANSFERS,
    Table,
)

Row = dict[str, Any]


def _open(subject: str, sealed: Any, category: str, keys: Mapping[str, bytes] | None) -> Any:
    if keys is None or sealed is None:
        return None
    key = keys.get(sealed["kid"])
    if key is None or "ct" not in sealed:
        return None
    try:
        return unseal(key, SealedValue.from_dict(sealed), subject=subject, category=category)
    except SealError:
        return None


def _rows(cur: Cursor, table: Table, sid: int, order: str = "seq") -> list[Row]:
    rows = cur.query(f"SELECT * FROM {table.name} WHERE sid = ? ORDER BY {order}", (sid,))
    return [decode_row(table, row) for row in rows]


def find_subject(cur: Cursor, subject_id: str) -> Row | None:
    rows = cur.query("SELECT * FROM rm_subjects WHERE subject = ?", (subject_id,))
    return decode_row(SUBJECTS, rows[0]) if rows else None


def subject_document(
    cur: Cursor, subject_id: str, keys: Mapping[str, bytes] | None = None
) -> dict[str, Any]:
    """The `subject show --json` object; raises `unknown_subject` for an unknown id."""
    subject = find_subject(cur, subject_id)
    if subject is None:
        raise LedgerError("unknown_subject", f"no subject {subject_id}")
    sid = int(subject["sid"])
    data = [
        {
            "category": item["category"],
            "value": None
            if item["erased"]
            else _open(subject_id, item["value"], item["category"], keys),
            "erased": item["erased"],
            "purpose": item["purpose"],
            "legal_basis": item["legal_basis"],
            "source": item["source"],
            "scope": item["scope"],
            "collected_at": item["collected_at"],
        }
        for item in _rows(cur, DATA_ITEMS, sid)
    ]
    retention = [
        {
            "scope": s["scope"],
            "deadline": s["deadline"],
            "held": s["held"],
            "shredded_at": s["shredded_at"],
        }
        for s in _rows(cur, SCOPES, sid)
    ]
    agreements = [
        {
            "agreement": a["agreement"],
            "recipient": {
                "kind": a["recipient_kind"],
                "name": _open(subject_id, a["recipient_name"], RECIPIENT_NAME, keys),
                "country": a["country"],
            },
            "categories": a["categories"],
            "purpose": a["purpose"],
            "valid_until": a["valid_until"],
            "agreed_at": a["agreed_at"],
            "revoked_at": a["revoked_at"],
        }
        for a in _rows(cur, AGREEMENTS, sid)
    ]
    return {
        "subject": subject_id,
        "kind": subject["kind"],
        "status": subject["status"],
        "registered_at": subject["registered_at"],
        "provided_by": subject["provided_by"],
        "relationships": [
            {k: r[k] for k in ("relationship", "active", "started_at", "ended_at")}
            for r in _rows(cur, RELATIONSHIPS, sid)
        ],
        "data": data,
        "consents": [
            {
                k: c[k]
                for k in (
                    "purpose",
                    "active",
                    "channels",
                    "explicit",
                    "categories",
                    "notice_version",
                    "method",
                    "given_at",
                    "withdrawn_at",
                )
            }
            for c in _rows(cur, CONSENTS, sid)
        ],
        "objections": [
            {"purpose": o["purpose"], "objected_at": o["objected_at"]}
            for o in _rows(cur, OBJECTIONS, sid)
        ],
        "restricted": subject["restricted"],
        "agreements": agreements,
        "disclosures": [
            {
                k: d[k]
                for k in ("agreement", "categories", "recipient_kind", "country", "disclosed_at")
            }
            for d in _rows(cur, DISCLOSURES, sid, "position")
        ],
        "transfers": [
            {k: t[k] for k in ("categories", "country", "recipient", "transferred_at")}
            for t in _rows(cur, TRANSFERS, sid, "position")
        ],
        "holds": [
            {k: h[k] for k in ("hold", "reason", "placed_at", "released_at")}
            for h in _rows(cur, HOLDS, sid)
        ],
        "retention": retention,
        "requests": [
            {
                "request": r["request"],
                "right": r["right_name"],
                "received_at": r["received_at"],
                "due": r["due"],
                "status": r["status"],
                "extended": r["extended_at"] is not None,
                "outcome": r["outcome"],
                "completed_at": r["completed_at"],
            }
            for r in _rows(cur, REQUESTS, sid)
        ],
        "erased_at": subject["erased_at"],
    }


def dump_tables(cur: Cursor) -> dict[str, list[Row]]:
    """Every read-model row in a stable order (tests compare an incremental and a rebuild)."""
    from ledger.projections.schema import ALL

    out: dict[str, list[Row]] = {}
    for table in ALL:
        if table.kind == "meta":
            continue
        order = ", ".join(table.key)
        rows = cur.query(f"SELECT * FROM {table.name} ORDER BY {order}")
        out[table.name] = [decode_row(table, row) for row in rows]
    return out


def canonical(rows: Any) -> bytes:
    return orjson.dumps(rows, option=orjson.OPT_SORT_KEYS)
