"""Appending: the ledger beside plain eventsourcing and raw psycopg, same backend, same run.

    python -m benchmarks.bench_append [--commands N] [--batches N] [--rounds N]
        [--backends sqlite,postgres]

1. One command per transaction: `collect` on existing subjects through `Ledger.execute`
   (parse, load, rules, seal, save, log) beside plain eventsourcing doing get → trigger →
   save of the same event with the value unencrypted (same cache, fast-forwarded on
   every load so that it stays current across processes, as the ledger's is).
2. `execute_many` with 1,000 commands per transaction (an onboarding mix: register with
   e-mail and phone, name, address, relationship, consent, marketing send, invoice) beside
   raw psycopg `executemany` of as many rows of the same size (PostgreSQL).

Each test runs `--rounds` times, the ledger and its baseline alternately; the figures are
medians, the ratio the median of the rounds' ratios (with their range): on a shared
machine one hiccup in a half-second run moved a single figure by a fifth. The rounds
write to the same ledger, so later rounds meet bigger tables (random keys: every insert
lands on another page); `execute_many` also reports its first and last round.
"""

from __future__ import annotations

import argparse
import os
import uuid
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from benchmarks.common import fresh_settings, median, postgres_reachable, report, timed
from ledger.config import Settings
from ledger.facade import Ledger
from ledger.persistence import application_env


class PlainSubject(Aggregate):
    """The baseline: the same facts as plain eventsourcing would keep them, unencrypted."""

    @event("Registered")
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.items: list[dict[str, Any]] = []

    @event("DataCollected")
    def collect(
        self, category: str, value: Any, purpose: str, legal_basis: str, source: str, scope: str
    ) -> None:
        self.items.append({"category": category, "value": value})


class PlainApplication(Application[UUID]):
    name = "Plain"


def _collect(subject: str, i: int) -> dict[str, Any]:
    return {
        "type": "collect",
        "subject": subject,
        "category": "correspondence",
        "value": f"Kunden ringede om regning nummer {i} og bad om en kopi pr. post.",
        "purpose": "customer_administration",
        "legal_basis": "contract",
        "source": "subject",
    }


def _register(subject: str, i: int) -> dict[str, Any]:
    return {
        "type": "register_subject",
        "subject": subject,
        "kind": "customer",
        "purpose": "customer_administration",
        "legal_basis": "contract",
        "identifiers": {"email": f"kunde{i}@example.dk", "phone": f"+45{20000000 + i}"},
    }


def onboarding(i: int) -> list[dict[str, Any]]:
    """Seven commands (nine events) for one new customer."""
    s = str(uuid.uuid4())
    base = {"subject": s, "purpose": "customer_administration", "legal_basis": "contract"}
    return [
        _register(s, i),
        {**base, "type": "collect", "category": "name", "value": f"Kunde {i}", "source": "subject"},
        {
            **base,
            "type": "collect",
            "category": "address",
            "value": f"Amagerbrogade {i % 300}, 2300 København S",
            "source": "subject",
        },
        {"type": "start_relationship", "subject": s, "relationship": "customer"},
        {
            "type": "give_consent",
            "subject": s,
            "purpose": "marketing",
            "notice_version": "2018-05-25",
            "method": "web_form",
            "channels": ["email"],
        },
        {
            "type": "process",
            "subject": s,
            "purpose": "marketing",
            "activity": "newsletter_sent",
            "channel": "email",
        },
        {
            "type": "collect",
            "subject": s,
            "category": "invoice",
            "value": {"number": f"F-{i}", "amount_dkk": "499.00"},
            "purpose": "bookkeeping",
            "legal_basis": "legal_obligation",
            "source": "system",
        },
    ]


def single_commands(backend: str, commands: int, subjects: int, rounds: int) -> dict[str, Any]:
    """`rounds` alternating runs of `commands` collects, ledger then plain eventsourcing;
    the ratio is the median of each round's (the machine's speed drifts between rounds)."""
    ledger_rates: list[float] = []
    plain_rates: list[float] = []
    with (
        fresh_settings(backend) as (settings, _env),
        Ledger.open(settings) as ledger,
        _PlainStore(settings, subjects) as plain,
    ):
        ids = [str(uuid.uuid4()) for _ in range(subjects)]
        ledger.execute_many([_register(s, i) for i, s in enumerate(ids)])
        for round_ in range(rounds):
            offset = round_ * commands
            results: list[dict[str, Any]] = []

            def run(offset: int = offset, results: list[dict[str, Any]] = results) -> None:
                for i in range(offset, offset + commands):
                    results.append(ledger.execute(_collect(ids[i % subjects], i)))

            ledger_rates.append(commands / timed(run))
            assert all(r["ok"] for r in results), results[:3]
            plain_rates.append(commands / plain.run(offset, commands))
    return {
        "backend": backend,
        "test": "one command per transaction",
        "events": commands * rounds,
        "rounds": rounds,
        "ledger_events_per_s": median(ledger_rates),
        "baseline": "plain eventsourcing, unencrypted",
        "baseline_events_per_s": median(plain_rates),
        "ratio": median([a / b for a, b in zip(ledger_rates, plain_rates, strict=True)]),
        "ratio_range": _range(ledger_rates, plain_rates),
        "goal": ">= 0.8",
    }


def _range(rates: list[float], baselines: list[float]) -> str:
    ratios = [a / b for a, b in zip(rates, baselines, strict=True)]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


class _PlainStore:
    """The baseline's application: its own database (SQLite file or schema), `subjects`
    aggregates made up front, collects timed by `run`."""

    def __init__(self, settings: Settings, subjects: int) -> None:
        self.settings = settings
        self.env = application_env(settings)
        # The library's own way for a cached aggregate to stay current when other processes
        # write: read its newer events on every load (the ledger does that too, in one query
        # per unit of work).
        self.env["AGGREGATE_CACHE_FASTFORWARD"] = "y"
        if settings.database.backend == "sqlite":
            assert settings.database.sqlite_path is not None
            self.env["SQLITE_DBNAME"] = str(settings.database.sqlite_path.with_name("plain.db"))
        else:
            self.env["POSTGRES_SCHEMA"] = settings.database.schema + "_plain"
            with psycopg.connect(settings.database.conninfo(), autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.env["POSTGRES_SCHEMA"]}"')
        self.app = PlainApplication(self.env)
        aggregates = [PlainSubject(kind="customer") for _ in range(subjects)]
        self.app.save(*aggregates)
        self.ids = [a.id for a in aggregates]

    def __enter__(self) -> _PlainStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.app.close()
        if self.settings.database.backend == "postgres":
            with psycopg.connect(self.settings.database.conninfo(), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.env["POSTGRES_SCHEMA"]}" CASCADE')

    def run(self, offset: int, commands: int) -> float:
        app, ids = self.app, self.ids

        def run() -> None:
            for i in range(offset, offset + commands):
                subject: PlainSubject = app.repository.get(ids[i % len(ids)])
                command = _collect(str(subject.id), i)
                subject.collect(
                    category=command["category"],
                    value=command["value"],
                    purpose=command["purpose"],
                    legal_basis=command["legal_basis"],
                    source=command["source"],
                    scope="customer_data",
                )
                app.save(subject)

        return timed(run)


def batches(backend: str, count: int, rounds: int) -> dict[str, Any]:
    """`rounds` alternating runs: `count` batches of 1,000 commands through the ledger,
    then (PostgreSQL) raw psycopg writing as many rows of the same sizes."""
    per_batch = 1000
    i = 0
    rates: list[float] = []
    raw_rates: list[float] = []
    total = 0
    with fresh_settings(backend) as (settings, _env):
        with Ledger.open(settings) as ledger:
            for _ in range(rounds):
                work = []
                for _ in range(count):
                    batch: list[dict[str, Any]] = []
                    while len(batch) < per_batch:
                        batch.extend(onboarding(i))
                        i += 1
                    work.append(batch[:per_batch])
                before = ledger.max_position()
                outcomes: list[dict[str, Any]] = []

                def run(
                    work: list[list[dict[str, Any]]] = work,
                    outcomes: list[dict[str, Any]] = outcomes,
                ) -> None:
                    for batch in work:
                        outcomes.extend(ledger.execute_many(batch))

                seconds = timed(run)
                events = ledger.max_position() - before
                bad = [r for r in outcomes if not r["ok"]]
                assert not bad, bad[:3]
                rates.append(events / seconds)
                total += events
                if backend == "postgres":
                    sizes = [len(n.state) for n in ledger.notifications(before + 1)]
                    raw_rates.append(_raw_psycopg(settings, events, sizes, count))
        row: dict[str, Any] = {
            "backend": backend,
            "test": "execute_many, 1,000 commands a transaction",
            "events": total,
            "rounds": rounds,
            "ledger_events_per_s": median(rates),
            # the ledger grows by every round: its first (empty) and last rounds
            "first_round_events_per_s": rates[0],
            "last_round_events_per_s": rates[-1],
        }
        if backend == "postgres":
            row.update(
                baseline="raw psycopg executemany, same row sizes",
                baseline_events_per_s=median(raw_rates),
                ratio=median([a / b for a, b in zip(rates, raw_rates, strict=True)]),
                ratio_range=_range(rates, raw_rates),
                goal=">= 0.35",
            )
        else:
            row.update(goal=">= 20,000 events/s")
        return row


def _raw_psycopg(settings: Settings, events: int, sizes: list[int], transactions: int) -> float:
    """Best of three: the baseline's run is short, and one checkpoint stall would halve it
    (which would flatter the ratio)."""
    return max(_raw_psycopg_once(settings, events, sizes, transactions) for _ in range(3))


def _raw_psycopg_once(
    settings: Settings, events: int, sizes: list[int], transactions: int
) -> float:
    schema = settings.database.schema + "_raw"
    rows = [
        ("Raw", uuid.uuid4(), 1, "ledger.domain.subject:DataSubject.DataCollected", os.urandom(n))
        for n in (sizes[i % len(sizes)] for i in range(events))
    ]
    per_tx = max(1, len(rows) // transactions)
    with psycopg.connect(settings.database.conninfo(), autocommit=False) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f'CREATE TABLE "{schema}".stored_events (application_name text, originator_id uuid, '
            "originator_version bigint, topic text, state bytea, "
            "notification_id bigserial, PRIMARY KEY (application_name, originator_id, "
            "originator_version))"
        )
        conn.commit()

        def run() -> None:
            with conn.cursor() as cur:
                for start in range(0, len(rows), per_tx):
                    cur.executemany(
                        f'INSERT INTO "{schema}".stored_events (application_name, originator_id, '
                        "originator_version, topic, state) VALUES (%s, %s, %s, %s, %s)",
                        rows[start : start + per_tx],
                    )
                    conn.commit()

        seconds = timed(run)
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.commit()
    return events / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="alternating runs; medians")
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    rows = []
    for backend in args.backends.split(","):
        if backend == "postgres" and not postgres_reachable():
            print("PostgreSQL is not reachable: skipping its rows")
            continue
        rows.append(single_commands(backend, args.commands, args.subjects, args.rounds))
        rows.append(batches(backend, args.batches, args.rounds))
    os.environ.setdefault("COLUMNS", "220")  # a wide table, also when not on a terminal
    report(
        "append",
        "Appending: ledger beside baselines (same backend, same run)",
        rows,
        [
            "backend",
            "test",
            "events",
            "ledger_events_per_s",
            "first_round_events_per_s",
            "last_round_events_per_s",
            "baseline",
            "baseline_events_per_s",
            "ratio",
            "ratio_range",
            "goal",
        ],
    )


if __name__ == "__main__":
    main()
