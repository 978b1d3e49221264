"""No personal value in the clear, anywhere the ledger writes (DESIGN 4.1, 4.10, 6).

A story uses every command type with CPR, e-mail, phone, names with æøå, health data, a
disclosure recipient and invoices, then reveals and sweeps. Afterwards every byte of every
file under LEDGER_HOME (databases, -wal/-shm, key store, ledger.log) and, on PostgreSQL,
every row of every table in the test's schema (as text, and bytea columns raw) is scanned
for each value in its original, lower and upper case, as UTF-8 and JSON-escaped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ledger.canonical import canonical_json
from ledger.clock import FixedClock
from ledger.commands import COMMANDS
from ledger.config import Settings
from ledger.facade import Ledger
from ledger.parallel import PARALLEL_FROM
from ledger.projections.schema import fingerprint
from tests.conftest import MASTER_KEY

CA = "customer_administration"

# Every personal value the story gives, as given (strings; JSON values listed by their parts).
NAME = "Søren Ærøskøbing-Åbenrå"
CPR = "070761-4285"
EMAIL = "Søren.Ærøskøbing@Østerbro-Post.dk"
PHONE = "+45 21 43 65 87"
ADDRESS = "Æblevej 17, 5970 Ærøskøbing"
NEW_ADDRESS = "Søndergade 3, 5970 Ærøskøbing"
NEW_EMAIL = "soren.aerobing@fjordpost.dk"
HEALTH = "Bruger iltapparat om natten"
FAMILY = "Enkemand, bor med datteren Ingrid"
RECIPIENT = "Ingrid Ærøskøbing-Åbenrå"
DOCTOR = "Lægehuset Østre Ølby"
INVOICE = {"number": "F-77123", "amount_dkk": "1234.50"}
CONTACT_NAME = "Kirstine Ødegård-Ørsted"
CONTACT_PHONE = "+45 55 66 77 88"
CONTACT_EMAIL = "kirstine@ødegård-ørsted.dk"
PROSPECT_EMAIL = "prospekt.ålborg@gæstebog.dk"
REJECTED_HEALTH = "Skizofreni diagnosticeret hos Ærø-borger"
REJECTED_CPR = "320161-4285"

VALUES = [
    NAME,
    CPR,
    "0707614285",
    EMAIL,
    PHONE,
    "+4521436587",
    "21436587",
    ADDRESS,
    NEW_ADDRESS,
    NEW_EMAIL,
    HEALTH,
    FAMILY,
    RECIPIENT,
    DOCTOR,
    "F-77123",
    "1234.50",
    "F-77124",
    "BS-99812",
    "KN-558877",
    "1961-07-07",
    "DK5000400440116243",
    "571313104112345678",
    "Varmepumpe Ø-3000",
    "4711 kWh",
    "tilbudsside-Ærø",
    "Grøn-energi-entusiast",
    "Vindmøllen på Ærø",
    "opkald-åbenrå-0302.wav",
    "Klage over regning fra Ålborg-kontoret",
    CONTACT_NAME,
    CONTACT_PHONE,
    "+4555667788",
    CONTACT_EMAIL,
    PROSPECT_EMAIL,
    REJECTED_HEALTH,
    REJECTED_CPR,
    "3201614285",
    "Ærøskøbing",
    "Ødegård-Ørsted",
    "iltapparat",
]

# Not personal, stored in the clear on purpose: the scan must find these (it sees the data).
CONTROLS = ["Nordisk Datacenter AB", "sommerlotteri-2026"]


def forms(value: str) -> set[bytes]:
    """Every byte form the value could be stored in."""
    found: set[bytes] = set()
    for text in {value, value.lower(), value.upper()}:
        found.add(text.encode("utf-8"))
        found.add(json.dumps(text)[1:-1].encode("ascii"))  # \\u00f8 ...
        found.add(json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8"))
    return found


def hex_forms(value: str) -> set[bytes]:
    """The same forms as PostgreSQL prints bytea in text (hex)."""
    return {form.hex().encode("ascii") for form in forms(value)}


# -- the story ------------------------------------------------------------------------


class Story:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.rejections: list[dict[str, Any]] = []
        self.idempotent: list[dict[str, Any]] = []
        self.types: set[str] = set()

    def ok(self, command: dict[str, Any]) -> dict[str, Any]:
        result = self.ledger.execute(command)
        assert result["ok"] is True, (command["type"], result)
        self.types.add(command["type"])
        if "idempotency_key" in command:
            self.idempotent.append(command)
        return result

    def rejected(self, command: dict[str, Any], code: str) -> None:
        result = self.ledger.execute(command)
        assert result["ok"] is False
        assert result["error"]["code"] == code, result
        self.rejections.append(result)


def collect(subject: str, category: str, value: Any, **fields: Any) -> dict[str, Any]:
    return {
        "type": "collect",
        "subject": subject,
        "category": category,
        "value": value,
        "purpose": CA,
        "legal_basis": "contract",
        "source": "subject",
        **fields,
    }


def run_story(ledger: Ledger, clock: FixedClock) -> Story:
    story = Story(ledger)
    ok = story.ok
    s = ok(
        {
            "type": "register_subject",
            "kind": "customer",
            "purpose": CA,
            "legal_basis": "contract",
            "identifiers": {
                "cpr": CPR,
                "email": EMAIL,
                "phone": PHONE,
                "customer_number": "KN-558877",
            },
            "cpr_ground": "identification",
            "idempotency_key": "crm-register-1",
        }
    )["subject"]
    ok(collect(s, "name", NAME, idempotency_key="crm-name-1"))
    ok(collect(s, "address", ADDRESS))
    ok(collect(s, "birth_date", "1961-07-07"))
    ok(collect(s, "payment_info", {"iban": "DK5000400440116243"}))
    ok(collect(s, "delivery_point", "571313104112345678"))
    ok(collect(s, "orders", ["Varmepumpe Ø-3000"]))
    ok(collect(s, "consumption", "4711 kWh"))
    ok(collect(s, "correspondence", "Klage over regning fra Ålborg-kontoret"))
    ok(
        collect(
            s,
            "digital_behaviour",
            {"klikket": "tilbudsside-Ærø"},
            purpose="analytics",
            legal_basis="legitimate_interest",
            source="observed",
        )
    )
    ok({"type": "start_relationship", "subject": s, "relationship": "customer"})
    ok(
        {
            "type": "give_consent",
            "subject": s,
            "purpose": CA,
            "notice_version": "2018-05-25",
            "method": "in_person",
            "explicit": True,
            "categories": ["health", "family_relations"],
        }
    )
    ok(collect(s, "health", HEALTH, idempotency_key="health-1"))
    ok(collect(s, "family_relations", FAMILY))
    ok({"type": "rectify", "subject": s, "category": "address", "value": NEW_ADDRESS})
    ok({"type": "rectify", "subject": s, "category": "email", "value": NEW_EMAIL})
    ok(
        {
            "type": "give_consent",
            "subject": s,
            "purpose": "marketing",
            "notice_version": "2018-05-25",
            "method": "web_form",
            "channels": ["email", "sms"],
        }
    )
    ok(
        collect(
            s,
            "marketing_profile",
            {"segment": "Grøn-energi-entusiast"},
            purpose="marketing",
            legal_basis="consent",
        )
    )
    ok(
        {
            "type": "process",
            "subject": s,
            "purpose": "marketing",
            "activity": "newsletter",
            "channel": "email",
            "categories": ["marketing_profile"],
        }
    )
    ok({"type": "withdraw_consent", "subject": s, "purpose": "marketing", "channels": ["sms"]})
    ok({"type": "object", "subject": s, "purpose": "analytics"})
    ok({"type": "restrict", "subject": s, "reason": "accuracy contested"})
    ok({"type": "lift_restriction", "subject": s, "reason": "figures corrected"})
    agreement = ok(
        {
            "type": "agree_disclosure",
            "subject": s,
            "recipient": {"kind": "family_member", "name": RECIPIENT, "country": "DK"},
            "categories": ["consumption"],
            "purpose": CA,
            "valid_until": "2026-12-31",
        }
    )["agreement"]
    ok({"type": "disclose", "subject": s, "agreement": agreement, "categories": ["consumption"]})
    ok({"type": "revoke_disclosure_agreement", "subject": s, "agreement": agreement})
    ok(
        {
            "type": "agree_disclosure",
            "subject": s,
            "recipient": {"kind": "general_practitioner", "name": DOCTOR, "country": "DK"},
            "categories": ["health"],
            "purpose": CA,
        }
    )
    ok(
        {
            "type": "transfer",
            "subject": s,
            "categories": ["orders"],
            "country": "SE",
            "recipient": "Nordisk Datacenter AB",
        }
    )
    ok({"type": "record_dialogue", "subject": s})
    ok(
        {
            "type": "notify_subject",
            "subject": s,
            "notice": "privacy_policy",
            "policy_version": "2018-05-25",
        }
    )
    ok(
        {
            "type": "give_consent",
            "subject": s,
            "purpose": "competition",
            "notice_version": "2018-05-25",
            "method": "web_form",
        }
    )
    ok(
        {
            "type": "enter_competition",
            "subject": s,
            "competition": "sommerlotteri-2026",
            "competition_ends_on": "2026-08-31",
        }
    )
    ok(
        collect(
            s,
            "competition_entry",
            {"svar": "Vindmøllen på Ærø"},
            purpose="competition",
            legal_basis="consent",
            competition="sommerlotteri-2026",
        )
    )
    ok(
        collect(
            s,
            "call_recording",
            {"fil": "opkald-åbenrå-0302.wav"},
            purpose="call_documentation",
            legal_basis="legitimate_interest",
            source="observed",
        )
    )
    ok(
        collect(
            s,
            "invoice",
            INVOICE,
            purpose="bookkeeping",
            legal_basis="legal_obligation",
            source="system",
            idempotency_key="invoice-F-77123",
        )
    )
    ok(
        collect(
            s,
            "payment_record",
            {"paid": "1234.50", "reference": "BS-99812"},
            purpose="bookkeeping",
            legal_basis="legal_obligation",
            source="system",
        )
    )
    hold = ok({"type": "place_legal_hold", "subject": s, "reason": "invoice dispute"})["hold"]
    ok({"type": "release_legal_hold", "subject": s, "hold": hold})
    request = ok({"type": "open_request", "subject": s, "right": "access"})["request"]
    ok({"type": "verify_identity", "subject": s, "request": request})
    ok({"type": "extend_request", "subject": s, "request": request, "reason": "many records"})
    ok(
        {
            "type": "complete_request",
            "subject": s,
            "request": request,
            "outcome": "fulfilled",
            "note": "sent by post",
        }
    )
    for _ in range(12):  # past 50 events, so a snapshot is stored too
        ok({"type": "record_dialogue", "subject": s})
    contact = ok(
        {
            "type": "register_subject",
            "kind": "contact_person",
            "purpose": CA,
            "legal_basis": "legitimate_interest",
            "provided_by": s,
            "identifiers": {"phone": CONTACT_PHONE, "email": CONTACT_EMAIL},
        }
    )["subject"]
    ok(
        collect(
            contact, "name", CONTACT_NAME, source="third_party", legal_basis="legitimate_interest"
        )
    )
    prospect = ok(
        {
            "type": "register_subject",
            "kind": "prospect",
            "purpose": "marketing",
            "legal_basis": "legitimate_interest",
            "identifiers": {"email": PROSPECT_EMAIL},
        }
    )["subject"]
    # rejected commands carrying values
    story.rejected(
        collect(s, "health", REJECTED_HEALTH, source="third_party"),
        "sensitive_requires_subject_source",
    )
    story.rejected(collect(contact, "health", REJECTED_HEALTH), "explicit_consent_required")
    story.rejected(collect(s, "cpr", REJECTED_CPR, cpr_ground="law"), "invalid_cpr")
    story.rejected(
        collect(s, "name", REJECTED_HEALTH, purpose="analytics", legal_basis="legitimate_interest"),
        "purpose_not_allowed",
    )
    story.rejected(
        {
            "type": "agree_disclosure",
            "subject": s,
            "recipient": {"kind": "other", "name": REJECTED_HEALTH, "country": "NO"},
            "categories": ["health"],
            "purpose": CA,
        },
        "transfer_outside_eu",
    )
    story.rejected(collect(s, "name", REJECTED_HEALTH, idempotency_key="crm-name-1"), "duplicate")
    story.rejected({"type": "collect", "subject": s, "value": REJECTED_HEALTH}, "invalid_command")
    story.rejected(collect(str(uuid.uuid4()), "name", REJECTED_HEALTH), "unknown_subject")
    # reads: a reveal (recorded), a lookup, history
    view = ledger.subject(s, reveal=True, purpose="customer service call", actor="agent-7")
    values = {d["category"]: d["value"] for d in view["data"]}
    assert values["health"] == HEALTH
    assert values["cpr"] == "0707614285"
    assert values["invoice"] == INVOICE
    assert {a["recipient"]["name"] for a in view["agreements"]} == {RECIPIENT, DOCTOR}
    assert ledger.find("cpr", CPR) == [s]
    assert ledger.history(s)
    # the end of it: erasure of the customer, and a sweep that shreds the prospect
    ok({"type": "end_relationship", "subject": s, "relationship": "customer"})
    erased = ok({"type": "erase", "subject": s})
    assert "customer_data" in erased["shredded"]
    swept = ledger.sweep(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    assert {(x["subject"], x["scope"]) for x in swept["shredded"]} >= {(prospect, "customer_data")}
    clock.set(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    ledger.subject(prospect, reveal=True, purpose="check")
    return story


# -- the scan ---------------------------------------------------------------------------


def files_under(home: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(home.rglob("*")):
        if path.is_file():
            yield str(path.relative_to(home)), path.read_bytes()


def leaks_in(blobs: list[tuple[str, bytes]]) -> list[str]:
    """Each personal value found in any of its byte forms, with where it was found."""
    return [
        f"{value!r} in {name}"
        for value in VALUES
        for name, data in blobs
        if any(form in data for form in forms(value))
    ]


def postgres_dump(settings: Settings) -> Iterator[tuple[str, bytes]]:
    """Every row of every table in the schema as text, and every bytea column raw."""
    db = settings.database
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = %s AND table_type = 'BASE TABLE'",
                (db.schema,),
            )
        ]
        assert tables
        for table in tables:
            name = sql.Identifier(db.schema, table)
            text = conn.execute(sql.SQL("SELECT t::text FROM {} t").format(name)).fetchall()
            yield f"{table} (text)", "\n".join(r[0] for r in text).encode("utf-8")
            columns = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = %s AND table_name = %s AND data_type = 'bytea'",
                    (db.schema, table),
                )
            ]
            for column in columns:
                rows = conn.execute(
                    sql.SQL("SELECT {} FROM {}").format(sql.Identifier(column), name)
                ).fetchall()
                yield f"{table}.{column} (raw)", b"\n".join(bytes(r[0]) for r in rows if r[0])


def test_no_personal_value_in_the_clear(
    ledger: Ledger, settings: Settings, clock: FixedClock, backend: str
) -> None:
    story = run_story(ledger, clock)
    assert story.types == set(COMMANDS)  # every command type of the contract
    subject_ids = list(ledger.subject_ids())
    ledger.close()  # flush everything to disk before reading it
    blobs = list(files_under(settings.home))
    names = [name for name, _ in blobs]
    assert "ledger.log" in names
    if backend == "sqlite":
        assert {"ledger.db", "keys.db"} <= set(names)
    hexed: list[tuple[str, bytes]] = []
    if backend == "postgres":
        dump = list(postgres_dump(settings))
        assert any(name.startswith("ledger_keys") for name, _ in dump)
        hexed = [(name, data) for name, data in dump if name.endswith("(text)")]
        blobs += dump
    everything = b"\n".join(data for _, data in blobs)

    # the scan sees what is stored in the clear
    for control in CONTROLS:
        assert control.encode() in everything, control
    assert subject_ids[0].encode() in everything

    leaks = leaks_in(blobs)
    leaks += [
        f"{value!r} (hex) in {name}"
        for value in VALUES
        for name, data in hexed
        if any(form in data for form in hex_forms(value))
    ]
    assert leaks == []

    # no error message holds a value, in any form
    messages = json.dumps([r["error"]["message"] for r in story.rejections], ensure_ascii=False)
    assert len(story.rejections) == 8
    for value in VALUES:
        for form in forms(value):
            assert form not in messages.encode("utf-8"), value

    # an idempotency receipt must not let the event store alone confirm a guessed value:
    # the unkeyed SHA-256 of a command that carried personal values appears nowhere
    assert story.idempotent
    for command in story.idempotent:
        body = {k: v for k, v in command.items() if k != "idempotency_key"}
        guess = hashlib.sha256(canonical_json(body)).hexdigest()
        assert guess.encode() not in everything, command["type"]


def test_a_batch_split_between_two_processes_leaves_no_personal_value_in_the_clear(
    ledger: Ledger, settings: Settings, backend: str
) -> None:
    """A batch large enough for a second process (`ledger.parallel`): the commands go to it
    in the clear over a pipe, its share comes back sealed, and nothing it or the writer
    stores or logs holds a value."""
    batch: list[dict[str, Any]] = []
    for _ in range(40):
        s = str(uuid.uuid4())
        batch += [
            {
                "type": "register_subject",
                "subject": s,
                "kind": "customer",
                "purpose": CA,
                "legal_basis": "contract",
                "identifiers": {"email": EMAIL, "phone": PHONE},
            },
            collect(s, "name", NAME),
            collect(s, "address", ADDRESS),
            {**collect(s, "invoice", INVOICE), "purpose": "bookkeeping"},
            {"type": "start_relationship", "subject": s, "relationship": "customer"},
        ]
    for command in batch:
        if command.get("purpose") == "bookkeeping":
            command.update(legal_basis="legal_obligation", source="system")
    assert len(batch) >= PARALLEL_FROM
    assert ledger.app.second_process is not None
    ledger.app.second_process.warm_up()
    results = ledger.execute_many(batch)
    assert all(r["ok"] for r in results), [r for r in results if not r.get("rolled_back")][:2]
    assert ledger.app.second_process.shares_sent == 1  # it was split
    assert len(ledger.find("email", EMAIL)) == 40
    ledger.close()
    blobs = list(files_under(settings.home))
    if backend == "postgres":
        blobs += list(postgres_dump(settings))
    assert leaks_in(blobs) == []


def test_freed_read_model_pages_hold_no_personal_value(tmp_path: Path, clock: FixedClock) -> None:
    """SQLite frees the pages of dropped read-model tables without zeroing them
    (`secure_delete=FAST`, docs/projections.md): what they still hold is scanned too."""
    settings = Settings.from_env(
        {"LEDGER_HOME": str(tmp_path / "home"), "LEDGER_MASTER_KEY": MASTER_KEY}
    )
    with Ledger.open(settings, clock=clock) as ledger:
        run_story(ledger, clock)
        models = ledger.read_models
        models.catch_up()
        models.recorder.reset(fingerprint(ledger.policy))  # drops every table, reuses nothing
    with sqlite3.connect(settings.home / "ledger.db") as db:
        freed = db.execute("PRAGMA freelist_count").fetchone()[0]
    assert freed > 0  # the old tables' pages are in the file, free
    assert leaks_in(list(files_under(settings.home))) == []


def test_a_new_ledger_home_and_its_log_are_the_owners_alone(tmp_path: Path) -> None:
    """Besides sealing: the folder a ledger creates is 0700 and its log 0600, so the
    event store and the log (pseudonymous ids, sealed values) are not for other users."""
    home = tmp_path / "home"
    settings = Settings.from_env({"LEDGER_HOME": str(home), "LEDGER_MASTER_KEY": MASTER_KEY})
    previous = os.umask(0o022)
    try:
        with Ledger.open(settings) as ledger:
            ledger.execute(
                {
                    "type": "register_subject",
                    "kind": "customer",
                    "purpose": "customer_administration",
                    "legal_basis": "contract",
                }
            )
    finally:
        os.umask(previous)
    assert home.stat().st_mode & 0o777 == 0o700
    assert settings.log_path is not None and settings.log_path.stat().st_mode & 0o777 == 0o600
    # the databases too, whatever the umask (SQLite created ledger.db 0644 under 022)
    databases = sorted(home.glob("*.db*"))
    assert {p.name for p in databases} >= {"ledger.db", "keys.db"}
    assert {p.name: p.stat().st_mode & 0o777 for p in databases} == {
        p.name: 0o600 for p in databases
    }
