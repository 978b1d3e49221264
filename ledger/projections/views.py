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
from ledger.errors import unknown_subject
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
)
from ledger.queries import agreement_entry, data_entry, request_entry, retention_entry

Row = dict[str, Any]


def open_sealed(subject: str, sealed: Any, category: str, keys: Mapping[str, bytes] | None) -> Any:
    """A sealed value opened with the caller's keys; None if its key is not among them
    (shredded) or it does not open."""
    if keys is None or sealed is None:
        return None
    key = keys.get(sealed["kid"])
    if key is None or "ct" not in sealed:
        return None
    try:
        return unseal(key, SealedValue.from_dict(sealed), subject=subject, category=category)
    except SealError:
        return None


def find_subject(cur: Cursor, subject_id: str) -> Row | None:
    rows = cur.query("SELECT * FROM rm_subjects WHERE subject = ?", (subject_id,))
    return decode_row(SUBJECTS, rows[0]) if rows else None


_TABLES = (
    (DATA_ITEMS, "seq"),
    (SCOPES, "seq"),
    (AGREEMENTS, "seq"),
    (RELATIONSHIPS, "seq"),
    (CONSENTS, "seq"),
    (OBJECTIONS, "seq"),
    (DISCLOSURES, "position"),
    (TRANSFERS, "position"),
    (HOLDS, "seq"),
    (REQUESTS, "seq"),
)
_BY_SUBJECT = "sid = (SELECT sid FROM rm_subjects WHERE subject = ?)"


def _subject_rows(cur: Cursor, subject_id: str) -> list[list[Row]]:
    """The subject's row, then its rows of each table in `_TABLES`, in display order.

    One query per table, all sent at once (one round trip on PostgreSQL).
    """
    return cur.query_many(
        [("SELECT * FROM rm_subjects WHERE subject = ?", (subject_id,))]
        + [
            (f"SELECT * FROM {t.name} WHERE {_BY_SUBJECT} ORDER BY {order}", (subject_id,))
            for t, order in _TABLES
        ]
    )


def subject_document(
    cur: Cursor, subject_id: str, keys: Mapping[str, bytes] | None = None
) -> dict[str, Any]:
    """The `subject show --json` object; raises `unknown_subject` for an unknown id."""
    found = _subject_rows(cur, subject_id)
    if not found[0]:
        raise unknown_subject(subject_id)
    subject = decode_row(SUBJECTS, found[0][0])
    rows = {
        t.name: [decode_row(t, row) for row in got]
        for (t, _), got in zip(_TABLES, found[1:], strict=True)
    }
    data = [
        data_entry(
            item,
            None
            if item["erased"]
            else open_sealed(subject_id, item["value"], item["category"], keys),
            erased=item["erased"],
        )
        for item in rows[DATA_ITEMS.name]
    ]
    retention = [
        retention_entry(s["scope"], s["deadline"], held=s["held"], shredded_at=s["shredded_at"])
        for s in rows[SCOPES.name]
    ]
    agreements = [
        agreement_entry(a, open_sealed(subject_id, a["recipient_name"], RECIPIENT_NAME, keys))
        for a in rows[AGREEMENTS.name]
    ]
    return {
        "subject": subject_id,
        "kind": subject["kind"],
        "status": subject["status"],
        "registered_at": subject["registered_at"],
        "provided_by": subject["provided_by"],
        "relationships": [
            {k: r[k] for k in ("relationship", "active", "started_at", "ended_at")}
            for r in rows[RELATIONSHIPS.name]
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
            for c in rows[CONSENTS.name]
        ],
        "objections": [
            {"purpose": o["purpose"], "objected_at": o["objected_at"]}
            for o in rows[OBJECTIONS.name]
        ],
        "restricted": subject["restricted"],
        "agreements": agreements,
        "disclosures": [
            {
                k: d[k]
                for k in ("agreement", "categories", "recipient_kind", "country", "disclosed_at")
            }
            for d in rows[DISCLOSURES.name]
        ],
        "transfers": [
            {k: t[k] for k in ("categories", "country", "recipient", "transferred_at")}
            for t in rows[TRANSFERS.name]
        ],
        "holds": [
            {k: h[k] for k in ("hold", "reason", "placed_at", "released_at")}
            for h in rows[HOLDS.name]
        ],
        "retention": retention,
        "requests": [request_entry(r, right=r["right_name"]) for r in rows[REQUESTS.name]],
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
