"""What a report is made of: data for programs, sections of text and tables for people."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from ledger.domain.calendar import local_date
from ledger.domain.policy import PolicyCatalogue
from ledger.projections.recorder import Cursor


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    empty: str = "None."


@dataclass
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


@dataclass
class Report:
    name: str
    title: str
    summary: str
    data: dict[str, Any]
    sections: list[Section]


@dataclass
class ReportContext:
    """What a report builder reads: one consistent read of the read models, and the moment.

    `now` is the moment the report speaks of (`--now`, or the replay's `--as-of`);
    `position` is the last event the read models include. `events_table` names the event
    store's table where it shares the read models' database (None in a replay's
    temporary store), for a report that reads the events themselves in the same read.
    """

    cursor: Cursor
    policy: PolicyCatalogue
    now: datetime
    position: int
    as_of: datetime | None = None
    basis: str | None = None
    events_table: str | None = None

    @property
    def today(self) -> date:
        return local_date(self.now)

    def query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        return self.cursor.query(sql, params)
