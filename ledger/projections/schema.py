"""The read-model tables (DESIGN 4.7), described once and rendered for SQLite and PostgreSQL.

Subjects get a small integer key, `sid` (the notification id of their `Registered` event),
so every other table is keyed by ascending integers: inserts append to the end of the
B-tree instead of landing on random pages, which is most of what makes a rebuild fast.

Sealed values are kept as JSON text exactly as the event holds them; timestamps stay the
RFC 3339 strings of the events, dates ISO strings, so a read model says precisely what the
event store says.

A secondary index exists only where a query of the ledger uses it (each says which).
Reports read whole tables, grouped by columns of a handful of values (purpose, kind,
status): at 111k subjects an index on purpose and category made the record of processing
read `rm_data_items` through it, 0.9 s where a scan took 0.55 s; the ten indexes no query
used cost a rebuild of 1M events 0.75 s of 15 s, and every batch their upkeep. They are
gone.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ledger.domain.policy import PolicyCatalogue

SCHEMA_VERSION = "1"
PROJECTION_NAME = "ReadModels"
TRACKING_TABLE = "readmodels_tracking"


@dataclass(frozen=True)
class Table:
    """One read-model table: its columns, key, and which columns hold JSON or booleans.

    `key` names the primary key. Keyed tables (`kind="keyed"`) are rows per subject and
    name (upserted); `kind="log"` tables are append-only, one row per event, keyed by the
    event's notification id (`position`), so an event applied twice cannot go unnoticed.
    """

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    kind: str = "keyed"
    indexes: tuple[tuple[str, ...], ...] = ()
    json: frozenset[str] = field(default_factory=frozenset)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    @property
    def booleans(self) -> frozenset[str]:
        return frozenset(name for name, kind in self.columns if kind == "bool")

    @property
    def key2(self) -> str:
        """The second key column of a keyed per-subject table (the first is `sid`)."""
        return self.key[1]


def _t(name: str, cols: str, key: str, kind: str = "keyed", **extra: object) -> Table:
    columns = tuple(
        (part.split()[0], part.split()[1]) for part in (c.strip() for c in cols.split(",")) if part
    )
    json = frozenset(n for n, k in columns if k == "json")
    indexes = extra.get("indexes", ())
    assert isinstance(indexes, tuple)
    return Table(name, columns, tuple(key.split(",")), kind, indexes, json)


SUBJECTS = _t(
    "rm_subjects",
    "sid int, subject text, kind text, purpose text, legal_basis text, provided_by text,"
    " registered_at text, actor text, status text, restricted bool, restriction_reason text,"
    " erased_at text, retention_shredded bool, held bool, relationship_active bool,"
    " relationship_ended_at text, last_dialogue_at text, marketing_registered_at text,"
    " processed int, views int, version int, position int",
    "sid",
    "subject",
    indexes=(("subject",),),  # subject show and find, by id
)
RELATIONSHIPS = _t(
    "rm_relationships",
    "sid int, relationship text, active bool, started_at text, ended_at text, seq int",
    "sid,relationship",
)
DATA_ITEMS = _t(
    "rm_data_items",
    "sid int, category text, value json, kid text, scope text, purpose text,"
    " legal_basis text, source text, collected_at text, cpr_ground text, rectified bool,"
    " erased bool, seq int",
    "sid,category",
)
CONSENTS = _t(
    "rm_consents",
    "sid int, purpose text, active bool, channels json, explicit bool, categories json,"
    " notice_version text, method text, given_at text, withdrawn_at text, seq int",
    "sid,purpose",
)
OBJECTIONS = _t(
    "rm_objections",
    "sid int, purpose text, objected_at text, seq int",
    "sid,purpose",
)
AGREEMENTS = _t(
    "rm_agreements",
    "sid int, agreement text, recipient_kind text, recipient_name json, name_kid text,"
    " country text, categories json, purpose text, valid_until text, agreed_at text,"
    " revoked_at text, seq int",
    "sid,agreement",
)
SCOPES = _t(
    "rm_scopes",
    "sid int, scope text, retention_class text, kids json, shredded json, live bool,"
    " deadline text, held bool, shredded_at text, shred_reason text, seq int",
    "sid,scope",
    indexes=(("deadline",),),  # the retention report: scopes due by a date, in order
)
HOLDS = _t(
    "rm_holds",
    "sid int, hold text, reason text, placed_at text, released_at text, seq int",
    "sid,hold",
)
COMPETITIONS = _t(
    "rm_competitions",
    "sid int, competition text, ends_on text, seq int",
    "sid,competition",
)
REQUESTS = _t(
    "rm_requests",
    "sid int, request text, right_name text, received_at text, due text, status text,"
    " verified_at text, extended_at text, extension_reason text, completed_at text,"
    " outcome text, seq int",
    "sid,request",
)

CONSENT_EVENTS = _t(
    "rm_consent_events",
    "position int, sid int, purpose text, action text, channels json, full_withdrawal bool,"
    " explicit bool, method text, notice_version text, occurred_at text, actor text",
    "position",
    "log",
)
RESTRICTIONS = _t(
    "rm_restrictions",
    "position int, sid int, action text, reason text, occurred_at text, actor text",
    "position",
    "log",
)
DISCLOSURES = _t(
    "rm_disclosures",
    "position int, sid int, agreement text, categories json, recipient_kind text,"
    " country text, disclosed_at text, actor text",
    "position",
    "log",
    indexes=(("sid",),),  # subject show
)
TRANSFERS = _t(
    "rm_transfers",
    "position int, sid int, categories json, country text, recipient text,"
    " transferred_at text, actor text",
    "position",
    "log",
    indexes=(("sid",),),  # subject show
)
PROCESSING = _t(
    "rm_processing",
    "position int, sid int, purpose text, activity text, channel text, categories json,"
    " occurred_at text, actor text",
    "position",
    "log",
)
NOTICES = _t(
    "rm_notices",
    "position int, sid int, notice text, policy_version text, purpose text, notified_at text,"
    " actor text",
    "position",
    "log",
)
ERASURES = _t(
    "rm_erasures",
    "position int, sid int, request text, shredded json, retained json, occurred_at text,"
    " actor text",
    "position",
    "log",
)
VIEWS = _t(
    "rm_views",
    "position int, sid int, purpose text, categories json, actor text, occurred_at text,"
    " recorded_at text",
    "position",
    "log",
)
COUNTERS = _t("rm_counters", "metric text, a text, b text, n int", "metric,a,b", "counter")
META = _t("rm_meta", "name text, value text", "name", "meta")

#: Per-subject keyed tables, loaded whole for every subject a batch touches.
KEYED: tuple[Table, ...] = (
    RELATIONSHIPS,
    DATA_ITEMS,
    CONSENTS,
    OBJECTIONS,
    AGREEMENTS,
    SCOPES,
    HOLDS,
    COMPETITIONS,
    REQUESTS,
)
LOGS: tuple[Table, ...] = (
    CONSENT_EVENTS,
    RESTRICTIONS,
    DISCLOSURES,
    TRANSFERS,
    PROCESSING,
    NOTICES,
    ERASURES,
    VIEWS,
)
ALL: tuple[Table, ...] = (SUBJECTS, *KEYED, *LOGS, COUNTERS, META)
BY_NAME = {table.name: table for table in ALL}

_TYPES = {
    "sqlite": {"int": "INTEGER", "text": "TEXT", "bool": "INTEGER", "json": "TEXT"},
    "postgres": {"int": "BIGINT", "text": "TEXT", "bool": "BOOLEAN", "json": "TEXT"},
}


def column_types(dialect: str, table: Table) -> list[str]:
    """The SQL type of each column, in order (binary COPY needs them on PostgreSQL)."""
    types = _TYPES[dialect]
    return [types[kind].lower() for _, kind in table.columns]


def create_statements(dialect: str, qualify: str = "", *, indexes: bool = True) -> list[str]:
    """DDL for every table and index; `qualify` is a schema prefix like '"s".'.

    `indexes=False` leaves out the secondary indexes, the subject lookup too: a rebuild
    creates them last, since one sort per index costs far less than keeping it through a
    million inserts (and the lookup's keys, random ids, put each insert on another page).
    Meanwhile a rebuild finds stored subjects by their key, the position of their
    registration, which the event store's own index gives (`ReadModels.rebuild`).
    """
    types = _TYPES[dialect]
    statements = []
    for table in ALL:
        cols = ", ".join(f"{name} {types[kind]}" for name, kind in table.columns)
        key = ", ".join(table.key)
        suffix = " WITHOUT ROWID" if dialect == "sqlite" and table.kind == "keyed" else ""
        name = f"{qualify}{table.name}"
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {name} ({cols}, PRIMARY KEY ({key})){suffix}"
        )
    return statements + index_statements(qualify) if indexes else statements


def index_statements(qualify: str = "") -> list[str]:
    """DDL for the secondary indexes, the subject lookup first."""
    others = [_index(i, qualify) for i in _INDEXES if i != SUBJECT_LOOKUP]
    return [_index(SUBJECT_LOOKUP, qualify), *others]


SUBJECT_LOOKUP = (SUBJECTS, ("subject",))
_INDEXES = [(table, index) for table in ALL for index in table.indexes]


def _index(which: tuple[Table, tuple[str, ...]], qualify: str) -> str:
    table, columns = which
    unique = "UNIQUE " if which == SUBJECT_LOOKUP else ""
    name = f"{table.name}_{'_'.join(columns)}"
    return (
        f"CREATE {unique}INDEX IF NOT EXISTS {name} ON {qualify}{table.name} ({', '.join(columns)})"
    )


def drop_statements(qualify: str = "") -> list[str]:
    return [f"DROP TABLE IF EXISTS {qualify}{table.name}" for table in ALL]


def _code_digest() -> str:
    """The source of the code that computes stored columns (handlers, deadlines, calendar)."""
    from ledger.domain import calendar, retention
    from ledger.projections import state

    digest = hashlib.sha256()
    for module in (calendar, retention, state, sys.modules[__name__]):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()


def fingerprint(policy: PolicyCatalogue) -> str:
    """What the stored rows depend on besides the events: this code and the retention rules.

    When it changes (new code, another catalogue) the read models are rebuilt.
    """
    parts = [SCHEMA_VERSION, _code_digest(), policy.name, policy.version]
    for name in sorted(policy.retention):
        klass = policy.retention[name]
        parts.append(f"{name}:{klass.anchor}:{klass.months}:{klass.years}:{klass.legal_obligation}")
    for table in ALL:
        parts.append(f"{table.name}({','.join(table.column_names)})")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
