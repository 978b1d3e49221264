"""Rights and retention: erasure latency against history length, and sweep throughput.

    python -m benchmarks.bench_rights [--subjects N] [--history N] [--scopes N]
                                      [--backends sqlite,postgres] [--only erase|sweep]
                                      [--profile]

1. Erasure latency. `erase` through `Ledger.execute` (load, rules, events, key destruction,
   lookup rows, compaction) for subjects whose history is one registration with its e-mail
   (2 events) and for subjects with 1,000 events (that registration and 998 `collect`s).
   Every subject has one live scope (customer_data) to shred. The ledger is reopened
   before timing, so no subject is in the aggregate cache: each erasure loads from the
   store, as an erasure of an arbitrary subject does. Small and large erasures alternate.
   Baseline: plain eventsourcing, get → one event → save on a 2-event aggregate (median).
   Goal: median(1,000) / median(2) <= 1.5, and median < 10 ms on SQLite.
2. Sweep throughput. 10,000 prospects registered long ago with an e-mail, so each has one
   customer_data scope past its deadline; `Ledger.sweep(now)` from a freshly opened ledger.
   Baseline: plain eventsourcing doing the sweeper's event work alone, unencrypted, in the
   same run: load each of 10,000 aggregates (2 events each), trigger one event, save 500
   aggregates a transaction, with no rules, key store or compaction.
   Goal: >= 1,000 scopes/s on SQLite and PostgreSQL.

`--profile` prints the top of a cProfile of one sweep and of the erasures.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from benchmarks.common import fresh_settings, median, postgres_reachable, report, timed
from ledger.config import Settings
from ledger.facade import Ledger
from ledger.persistence import application_env

CA = "customer_administration"
LONG_AGO = "2024-01-10T09:00:00+01:00"  # registration: customer_data due on 10 March 2024
SWEEP_AT = datetime(2025, 1, 1, 3, 0, tzinfo=UTC)
PER_TRANSACTION = 1000


class PlainSubject(Aggregate):
    """The baseline's aggregate: the same facts, unencrypted, no rules."""

    @event("Registered")
    def __init__(self, kind: str, email: str) -> None:
        self.kind = kind
        self.items = [{"category": "email", "value": email}]
        self.shredded: list[str] = []

    @event("DataCollected")
    def collect(self, category: str, value: Any) -> None:
        self.items.append({"category": category, "value": value})

    @event("ScopeShredded")
    def shred(self, scope: str, reason: str, deadline: str) -> None:
        self.shredded.append(scope)


class PlainApplication(Application[UUID]):
    name = "PlainRights"


def _register(subject: str, i: int, occurred_at: str | None = None) -> dict[str, Any]:
    command: dict[str, Any] = {
        "type": "register_subject",
        "subject": subject,
        "kind": "prospect",
        "purpose": CA,
        "legal_basis": "legitimate_interest",
        "identifiers": {"email": f"person{i}@example.dk"},
    }
    if occurred_at:
        command["occurred_at"] = occurred_at
    return command


def _collect(subject: str, i: int) -> dict[str, Any]:
    return {
        "type": "collect",
        "subject": subject,
        "category": "correspondence",
        "value": f"Henvendelse nummer {i}: kunden spurgte til sin aflæsning og fik svar.",
        "purpose": CA,
        "legal_basis": "legitimate_interest",
        "source": "subject",
    }


def _execute_in_batches(ledger: Ledger, commands: list[dict[str, Any]]) -> None:
    for start in range(0, len(commands), PER_TRANSACTION):
        results = ledger.execute_many(commands[start : start + PER_TRANSACTION])
        bad = [r for r in results if not r["ok"]]
        assert not bad, bad[:3]


@contextmanager
def _maybe_profile(enabled: bool, title: str) -> Iterator[None]:
    if not enabled:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
        stats.print_stats(30)
        print(f"--- cProfile: {title} ---")
        print(out.getvalue())


# -- 1. erasure latency ---------------------------------------------------------------------


def erasure(backend: str, subjects: int, history: int, profile: bool) -> dict[str, Any]:
    small = [str(uuid.uuid4()) for _ in range(subjects)]
    large = [str(uuid.uuid4()) for _ in range(subjects)]
    with fresh_settings(backend) as (settings, _env):
        with Ledger.open(settings) as ledger:
            _execute_in_batches(
                ledger, [_register(s, i) for i, s in enumerate(small + large)]
            )  # 2 events each
            for s in large:
                _execute_in_batches(ledger, [_collect(s, i) for i in range(history - 2)])
            assert len(ledger.history(large[0])) == history
            assert len(ledger.history(small[0])) == 2
        small_ms: list[float] = []
        large_ms: list[float] = []
        with Ledger.open(settings) as ledger, _maybe_profile(profile, f"{backend} erasures"):
            for s_small, s_large in zip(small, large, strict=True):
                for subject, into in ((s_small, small_ms), (s_large, large_ms)):
                    command = {"type": "erase", "subject": subject}
                    started = time.perf_counter()
                    result = ledger.execute(command)
                    into.append((time.perf_counter() - started) * 1000)
                    assert result["ok"] and result["shredded"] == ["customer_data"], result
            assert not ledger.keystore.live_kids()
        baseline_ms = _plain_one_event(settings, subjects)
    small_median, large_median = median(small_ms), median(large_ms)
    ratio = large_median / small_median
    return {
        "backend": backend,
        "test": f"erase, 2 vs {history:,} events",
        "n": subjects,
        "ledger": f"{small_median:.2f} / {large_median:.2f} ms",
        "baseline": f"{baseline_ms:.2f} ms",
        "ratio": ratio,
        "ratio_of": f"{history:,} ev / 2 ev",
        "goal": "<= 1.5" + (", < 10 ms" if backend == "sqlite" else ""),
        "met": ratio <= 1.5 and (backend != "sqlite" or max(small_median, large_median) < 10),
        "small_median_ms": small_median,
        "large_median_ms": large_median,
        "baseline_median_ms": baseline_ms,
        "baseline_is": "plain eventsourcing: get, one event, save; 2-event aggregate, cold cache",
    }


def _plain_app(settings: Settings, suffix: str) -> tuple[PlainApplication, Callable[[], None]]:
    """A plain eventsourcing application beside the ledger's database (file or schema)."""
    env = application_env(settings)
    if settings.database.backend == "sqlite":
        assert settings.database.sqlite_path is not None
        env["SQLITE_DBNAME"] = str(settings.database.sqlite_path.with_name(f"plain{suffix}.db"))
    else:
        env["POSTGRES_SCHEMA"] = f"{settings.database.schema}_plain{suffix}"
        with psycopg.connect(settings.database.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{env["POSTGRES_SCHEMA"]}"')

    def drop() -> None:
        if settings.database.backend == "postgres":
            with psycopg.connect(settings.database.conninfo(), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{env["POSTGRES_SCHEMA"]}" CASCADE')

    return PlainApplication(env), drop


def _plain_aggregates(app: PlainApplication, count: int) -> list[UUID]:
    ids: list[UUID] = []
    for start in range(0, count, PER_TRANSACTION):
        batch = []
        for i in range(start, min(count, start + PER_TRANSACTION)):
            subject = PlainSubject(kind="prospect", email=f"person{i}@example.dk")
            subject.collect(category="email", value=f"person{i}@example.dk")
            batch.append(subject)
        app.save(*batch)
        ids.extend(s.id for s in batch)
    return ids


def _plain_one_event(settings: Settings, count: int) -> float:
    app, drop = _plain_app(settings, "_erase")
    try:
        ids = _plain_aggregates(app, count)
        app.close()
        app, _ = _plain_app(settings, "_erase")  # cold cache, as for the ledger
        times = []
        for aggregate_id in ids:

            def once(aggregate_id: UUID = aggregate_id) -> None:
                subject: PlainSubject = app.repository.get(aggregate_id)
                subject.shred(scope="customer_data", reason="erasure", deadline="")
                app.save(subject)

            times.append(timed(once) * 1000)
        return median(times)
    finally:
        app.close()
        drop()


# -- 2. sweep throughput ----------------------------------------------------------------------


def sweep(backend: str, scopes: int, profile: bool) -> dict[str, Any]:
    with fresh_settings(backend) as (settings, _env):
        with Ledger.open(settings) as ledger:
            _execute_in_batches(
                ledger, [_register(str(uuid.uuid4()), i, LONG_AGO) for i in range(scopes)]
            )
            assert len(ledger.keystore.live_kids()) == scopes
        swept: dict[str, Any] = {}
        with Ledger.open(settings) as ledger:
            with _maybe_profile(profile, f"{backend} sweep"):
                seconds = timed(lambda: swept.update(ledger.sweep(SWEEP_AT)))
            assert len(swept["shredded"]) == scopes, len(swept["shredded"])
            assert not ledger.keystore.live_kids()
            assert ledger.sweep(SWEEP_AT)["shredded"] == []
        baseline_seconds = _plain_sweep(settings, scopes)
    rate = scopes / seconds
    baseline_rate = scopes / baseline_seconds
    return {
        "backend": backend,
        "test": f"sweep, {scopes:,} scopes due",
        "n": scopes,
        "ledger": f"{rate:,.0f} /s",
        "baseline": f"{baseline_rate:,.0f} /s",
        "ratio": rate / baseline_rate,
        "ratio_of": "ledger / base",
        "goal": ">= 1,000 /s",
        "met": rate >= 1000,
        "scopes_per_s": rate,
        "seconds": seconds,
        "baseline_per_s": baseline_rate,
        "baseline_is": "plain eventsourcing: load, one event, save 500 a transaction; no keys",
    }


def _plain_sweep(settings: Settings, count: int) -> float:
    app, drop = _plain_app(settings, "_sweep")
    try:
        ids = _plain_aggregates(app, count)
        app.close()
        app, _ = _plain_app(settings, "_sweep")

        def run() -> None:
            for start in range(0, len(ids), 500):
                batch = []
                for aggregate_id in ids[start : start + 500]:
                    subject: PlainSubject = app.repository.get(aggregate_id)
                    subject.shred(scope="customer_data", reason="retention", deadline="2024-03-10")
                    batch.append(subject)
                app.save(*batch)

        return timed(run)
    finally:
        app.close()
        drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=50, help="subjects per history length")
    parser.add_argument("--history", type=int, default=1000, help="events of a long history")
    parser.add_argument("--scopes", type=int, default=10_000, help="scopes due for the sweep")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--only", choices=("erase", "sweep"), help="run one of the two")
    parser.add_argument("--profile", action="store_true", help="print cProfile summaries")
    args = parser.parse_args()
    rows = []
    for backend in args.backends.split(","):
        if backend == "postgres" and not postgres_reachable():
            print("PostgreSQL is not reachable: skipping its rows")
            continue
        if args.only in (None, "erase"):
            rows.append(erasure(backend, args.subjects, args.history, args.profile))
        if args.only in (None, "sweep"):
            rows.append(sweep(backend, args.scopes, args.profile))
    path = report(
        "rights",
        "Rights: erasure latency (median), sweep throughput; baselines in the same run",
        rows,
        ["backend", "test", "ledger", "baseline", "ratio", "ratio_of", "goal", "met"],
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
