"""Helpers for the audit tests: a small story on a ledger, and raw SQL access for tampering.

`Raw` talks to the database behind the ledger's back, the way an attacker (or a broken
disk) would: it edits event rows and the log's tables directly.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

from ledger.audit import service
from ledger.audit.log import AuditLog
from ledger.config import Settings
from ledger.facade import Ledger

CA = "customer_administration"

# Personal values the story writes: none may appear in a leaf or a bundle.
PLAINTEXTS = ("Tove Ditlevsen", "tove@example.dk", "Vesterbrogade 1, 1620 Kobenhavn V", "Mormor")


def story(ledger: Ledger, subjects: int = 3) -> list[str]:
    """Several subjects with every kind of sealed value, processing, disclosure, a request,
    and (for the second subject) an erasure. Returns the subject ids."""
    ids: list[str] = []
    for n in range(subjects):
        sid = str(uuid.UUID(int=0x5EED0000 + n))
        ids.append(sid)
        commands: list[dict[str, Any]] = [
            {
                "type": "register_subject",
                "subject": sid,
                "kind": "customer",
                "purpose": CA,
                "legal_basis": "contract",
                "identifiers": {"email": PLAINTEXTS[1].replace("@", f"{n}@")},
            },
            {
                "type": "collect",
                "subject": sid,
                "category": "name",
                "value": PLAINTEXTS[0],
                "purpose": CA,
                "legal_basis": "contract",
                "source": "subject",
            },
            {
                "type": "collect",
                "subject": sid,
                "category": "address",
                "value": PLAINTEXTS[2],
                "purpose": CA,
                "legal_basis": "contract",
                "source": "subject",
            },
            {
                "type": "give_consent",
                "subject": sid,
                "purpose": "marketing",
                "notice_version": "2018-05-25",
                "method": "web_form",
                "channels": ["email"],
            },
            {
                "type": "process",
                "subject": sid,
                "purpose": "marketing",
                "activity": "newsletter",
                "channel": "email",
            },
            {
                "type": "agree_disclosure",
                "subject": sid,
                "recipient": {"kind": "family_member", "name": PLAINTEXTS[3], "country": "DK"},
                "categories": ["name"],
                "purpose": CA,
            },
        ]
        for command in commands:
            result = ledger.execute(command)
            assert result["ok"], (command["type"], result)
            if command["type"] == "agree_disclosure":
                disclosed = ledger.execute(
                    {
                        "type": "disclose",
                        "subject": sid,
                        "agreement": result["agreement"],
                        "categories": ["name"],
                    }
                )
                assert disclosed["ok"], disclosed
        opened = ledger.execute({"type": "open_request", "subject": sid, "right": "access"})
        assert opened["ok"], opened
        done = ledger.execute(
            {
                "type": "complete_request",
                "subject": sid,
                "request": opened["request"],
                "outcome": "fulfilled",
            }
        )
        assert done["ok"], done
    if subjects > 1:
        erased = ledger.execute({"type": "erase", "subject": ids[1]})
        assert erased["ok"] and erased["shredded"], erased
    return ids


def audit(ledger: Ledger) -> AuditLog:
    return service.audit_log(ledger)


class Raw:
    """Direct SQL on the ledger's database (SQLite file or PostgreSQL schema)."""

    def __init__(self, settings: Settings) -> None:
        db = settings.database
        self.dialect = db.backend
        if db.backend == "sqlite":
            assert db.sqlite_path is not None
            self.conn: Any = sqlite3.connect(db.sqlite_path, isolation_level=None)
            self.events = "stored_events"
            self.id_column = "rowid"
        else:
            self.conn = psycopg.connect(db.conninfo(), autocommit=True)
            self.conn.execute(f'SET search_path TO "{db.schema}"')
            self.events = "ledger_events"
            self.id_column = "notification_id"

    def q(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        sql = sql.replace("EVENTS", self.events).replace("NID", self.id_column)
        if self.dialect == "postgres":
            sql = sql.replace("?", "%s")
        cur = self.conn.execute(sql, tuple(params))
        rows = cur.fetchall() if cur.description else []
        return [tuple(r) for r in rows]

    def event(self, nid: int) -> tuple[Any, ...]:
        """(originator_id, version, topic, state) of one event."""
        rows = self.q(
            "SELECT originator_id, originator_version, topic, state FROM EVENTS WHERE NID = ?",
            (nid,),
        )
        assert rows, nid
        return rows[0]

    def set_state(self, nid: int, state: bytes) -> None:
        self.q("UPDATE EVENTS SET state = ? WHERE NID = ?", (state, nid))

    def close(self) -> None:
        self.conn.close()


def subject_of(raw_id: Any) -> str:
    return str(raw_id if isinstance(raw_id, uuid.UUID) else uuid.UUID(raw_id))
