"""Read models: rebuild throughput and memory, `subject show` and `subject find` latency.

    python -m benchmarks.bench_projections [--events 100000] [--big 1000000]
        [--backends sqlite,postgres] [--pg-big 0] [--repeat 3] [--big-repeat 3] [--reuse]

1. Rebuild: `ReadModels.rebuild()` (drop, replay every notification into the tables)
   beside plain eventsourcing reading and decoding the same notifications
   (`select_notifications` pages of 1,000 and `mapper.to_domain_event`), alternately in
   child processes of the same run, best of `--repeat` (`--big-repeat` at the big size).
   The ratio is of events/s (goal >= 0.5), by wall clock and by CPU time of the process
   (CPU time is steadier on a shared machine), and as the median of each rebuild beside
   the read just before it (`paired_median_ratio`: the steadiest when the machine's
   speed drifts). Peak RSS is each child's own maximum, at `--events` and `--big`.
2. Latency at the big size (about 111,000 subjects for 1,000,000 events): `subject show`
   (no reveal; catch-up check included) of a subject with 1,000 events and of an ordinary
   one, beside the aggregate-based view it replaced (load + `ledger.queries.subject_view`,
   no aggregate cache); `subject find` by e-mail (keyed-hash lookup in the key store plus
   the existence check), median of many calls.

Data is made with `Ledger.execute_many`, 1,000 commands a transaction (the onboarding mix
of `bench_append`: nine events per customer); making a million events takes a while, so
`--reuse` keeps the two ledgers (small and big) for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.bench_append import onboarding
from benchmarks.common import MASTER_KEY, PG_URL, fresh_settings, postgres_reachable, report
from ledger.app import LedgerApplication
from ledger.config import DatabaseURL, Settings
from ledger.facade import Ledger
from ledger.persistence import application_env
from ledger.projections import ReadModels
from ledger.queries import subject_view

BATCH = 1000


def generate(ledger: Ledger, target: int, start: int, *, quiet: bool = False) -> int:
    """Onboard customers until the log holds `target` events; returns the next index."""
    i = start
    begun = time.perf_counter()
    first = ledger.max_position()
    next_note = first + 100_000
    while ledger.max_position() < target:
        batch: list[dict[str, Any]] = []
        while len(batch) < BATCH:
            batch.extend(onboarding(i))
            i += 1
        results = ledger.execute_many(batch[:BATCH])
        assert all(r["ok"] for r in results), results[0]
        if not quiet and ledger.max_position() >= next_note:
            next_note += 100_000
            rate = (ledger.max_position() - first) / (time.perf_counter() - begun)
            print(f"  {ledger.max_position():>9,} events ({rate:,.0f}/s)", file=sys.stderr)
    return i


LONG_SUBJECT = "1000e000-0000-4000-8000-000000001000"


def long_subject(ledger: Ledger, events: int) -> str:
    """A subject with `events` events (registration, then correspondence)."""
    subject = LONG_SUBJECT
    if ledger.app.subject_exists(subject):
        return subject
    commands: list[dict[str, Any]] = [
        {
            "type": "register_subject",
            "subject": subject,
            "kind": "customer",
            "purpose": "customer_administration",
            "legal_basis": "contract",
        }
    ]
    commands += [
        {
            "type": "collect",
            "subject": subject,
            "category": "correspondence",
            "value": f"Henvendelse nummer {n} om regningen.",
            "purpose": "customer_administration",
            "legal_basis": "contract",
            "source": "subject",
        }
        for n in range(events - 1)
    ]
    for start in range(0, len(commands), BATCH):
        results = ledger.execute_many(commands[start : start + BATCH])
        assert all(r["ok"] for r in results)
    return subject


# -- children: one measurement each, so each has its own peak RSS ---------------------------


def child(kind: str, env: dict[str, str]) -> dict[str, Any]:
    """Run in a fresh process: the baseline read or a rebuild, with time and peak RSS."""
    settings = Settings.from_env(env)
    app = LedgerApplication(application_env(settings))
    wall = time.perf_counter()
    cpu = time.process_time()
    events = 0
    if kind == "baseline":
        position = 1
        while True:
            page = app.recorder.select_notifications(start=position, limit=BATCH)
            if not page:
                break
            for notification in page:
                app.mapper.to_domain_event(notification)
            events += len(page)
            position = page[-1].id + 1
    else:
        models = ReadModels.open(app, app.policy)
        wall = time.perf_counter()
        cpu = time.process_time()
        events = models.rebuild()
        models.close()
    out = {
        "kind": kind,
        "events": events,
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "peak_rss_mb": peak_rss_mb(),
    }
    app.close()
    return out


def peak_rss_mb() -> float:
    """This process's own peak resident set (VmHWM).

    Not `getrusage`: a child started by vfork/exec inherits the parent's high-water mark
    in `ru_maxrss`, which would report the generator's memory, not the rebuild's.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(kind: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_projections", "--child", kind],
        input=json.dumps(env),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def rebuild_row(backend: str, env: dict[str, str], repeat: int) -> dict[str, Any]:
    base: list[dict[str, Any]] = []
    built: list[dict[str, Any]] = []
    for _ in range(repeat):
        base.append(run_child("baseline", env))
        built.append(run_child("rebuild", env))
    events = built[0]["events"]
    paired = [b["seconds"] / r["seconds"] for b, r in zip(base, built, strict=True)]
    b = min(base, key=lambda r: r["seconds"])
    r = min(built, key=lambda r: r["seconds"])
    b_cpu = min(x["cpu_seconds"] for x in base)
    r_cpu = min(x["cpu_seconds"] for x in built)
    return {
        "backend": backend,
        "test": "rebuild",
        "events": events,
        "rebuild_events_per_s": events / r["seconds"],
        "baseline": "eventsourcing: select_notifications + to_domain_event",
        "baseline_events_per_s": events / b["seconds"],
        "ratio": b["seconds"] / r["seconds"],
        "ratio_cpu": b_cpu / r_cpu,
        "median_ratio": statistics.median(x["seconds"] for x in base)
        / statistics.median(x["seconds"] for x in built),
        # each rebuild beside the plain read run just before it: the machine's speed
        # drifts (by up to 2x on a busy day), two neighbouring runs share its state
        "paired_median_ratio": statistics.median(paired),
        # every round, for the spread: on this shared machine one round can differ by a fifth
        "paired_ratios": [round(x, 3) for x in paired],
        "rebuild_peak_rss_mb": max(x["peak_rss_mb"] for x in built),
        "baseline_peak_rss_mb": max(x["peak_rss_mb"] for x in base),
        "goal": ">= 0.5",
    }


def median_ms(fn: Any, calls: int) -> float:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def latency_rows(
    backend: str, settings: Settings, ledger: Ledger, subjects: int, long_id: str
) -> list[dict[str, Any]]:
    ledger.read_models.catch_up()
    env = application_env(settings)
    env.pop("AGGREGATE_CACHE_MAXSIZE", None)  # the old path as a first query would meet it
    env.pop("AGGREGATE_CACHE_FASTFORWARD", None)
    plain = LedgerApplication(env, policy=ledger.policy)
    ordinary = next(iter(ledger.subject_ids()))
    rows = []
    try:
        for label, subject_id, events in (
            ("subject show, 1,000 events", long_id, 1000),
            ("subject show, ordinary subject", ordinary, 9),
        ):
            assert ledger.subject(subject_id) == subject_view(
                plain.load_subject(subject_id), ledger.policy
            )
            ms = median_ms(lambda s=subject_id: ledger.subject(s), 60)
            old = median_ms(
                lambda s=subject_id: subject_view(plain.load_subject(s), ledger.policy), 60
            )
            rows.append(
                {
                    "backend": backend,
                    "test": label,
                    "subjects": subjects,
                    "subject_events": events,
                    "median_ms": ms,
                    "baseline": "aggregate: load (snapshots) + subject_view",
                    "baseline_median_ms": old,
                    "ratio": old / ms,
                }
            )
        picks = [random.randrange(subjects - 1) for _ in range(200)]
        emails = iter([f"kunde{i}@example.dk" for i in picks] * 2)
        found = ledger.find("email", "kunde0@example.dk")
        assert len(found) == 1, found
        find_ms = median_ms(lambda: ledger.find("email", next(emails)), 200)
        rows.append(
            {
                "backend": backend,
                "test": "subject find (e-mail)",
                "subjects": subjects,
                "median_ms": find_ms,
            }
        )
        emails = iter([f"kunde{i}@example.dk" for i in picks] * 2)

        def find_and_show() -> None:
            for s in ledger.find("email", next(emails)):
                ledger.subject(s)

        rows.append(
            {
                "backend": backend,
                "test": "subject find + show (what the CLI does)",
                "subjects": subjects,
                "median_ms": median_ms(find_and_show, 200),
            }
        )
    finally:
        plain.close()
    return rows


@contextmanager
def dataset(backend: str, name: str, reuse: bool) -> Iterator[tuple[Settings, dict[str, str]]]:
    """A ledger to measure: fresh and removed afterwards, or (`--reuse`) kept for next time."""
    if not reuse:
        with fresh_settings(backend) as found:
            yield found
        return
    home = Path(tempfile.gettempdir()) / f"ledger-bench-projections-{backend}-{name}"
    env = {"LEDGER_HOME": str(home), "LEDGER_MASTER_KEY": MASTER_KEY}
    if backend == "postgres":
        schema = f"bench_projections_{name}"
        with psycopg.connect(DatabaseURL.parse(PG_URL).conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        env["LEDGER_DATABASE_URL"] = f"{PG_URL}?schema={schema}"
    yield Settings.from_env(env), env


def grow(settings: Settings, target: int, backend: str, *, long: bool) -> tuple[int, float]:
    """Generate up to `target` events (nothing if there already); returns (new, seconds)."""
    with Ledger.open(settings) as ledger:
        before = ledger.max_position()
        if before >= target:
            return 0, 0.0
        print(f"{backend}: generating {before:,} -> {target:,} events", file=sys.stderr)
        started = time.perf_counter()
        start = sum(1 for _ in ledger.subject_ids())
        generate(ledger, target - 1000 if long else target, start)
        if long:
            long_subject(ledger, 1000)
        return ledger.max_position() - before, time.perf_counter() - started


def bench_backend(
    backend: str, events: int, big: int, repeat: int, reuse: bool, big_repeat: int = 1
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with dataset(backend, "small", reuse) as (settings, env):
        grow(settings, events, backend, long=False)
        rows.append(rebuild_row(backend, env, repeat))
        print(json.dumps(rows[-1]), file=sys.stderr)
    if big <= events:
        return rows
    with dataset(backend, "big", reuse) as (settings, env):
        made, seconds = grow(settings, big, backend, long=True)
        with Ledger.open(settings) as ledger:
            caught = time.perf_counter()
            applied = ledger.read_models.catch_up()
            caught = time.perf_counter() - caught
            total = ledger.max_position()
            subjects = sum(1 for _ in ledger.subject_ids())
            if made:
                rows.append(
                    {
                        "backend": backend,
                        "test": "generate + incremental catch-up",
                        "events": total,
                        "subjects": subjects,
                        "generate_events_per_s": made / seconds,
                        "catch_up_events_per_s": applied / caught if applied else None,
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
            rows.extend(latency_rows(backend, settings, ledger, subjects, LONG_SUBJECT))
            print(json.dumps(rows[-4:]), file=sys.stderr)
        rows.append(rebuild_row(backend, env, big_repeat))
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--pg-big", type=int, default=0, help="big size on PostgreSQL (0: skip)")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--big-repeat", type=int, default=3, help="rounds at the big size (a minute each)"
    )
    parser.add_argument("--child", choices=["baseline", "rebuild"])
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the generated ledgers (in the temp folder / fixed schemas) for the next run",
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(sys.stdin.read()))))
        return
    rows: list[dict[str, Any]] = []
    for backend in args.backends.split(","):
        if backend == "postgres" and not postgres_reachable():
            print("PostgreSQL is not reachable: skipped", file=sys.stderr)
            continue
        big = args.big if backend == "sqlite" else args.pg_big
        rows.extend(
            bench_backend(backend, args.events, big, args.repeat, args.reuse, args.big_repeat)
        )
    os.environ.setdefault("COLUMNS", "200")  # a wide table, also when not on a terminal
    report(
        "projections",
        "Read models: rebuild beside plain eventsourcing, query latency",
        rows,
        [
            "backend",
            "test",
            "events",
            "subjects",
            "rebuild_events_per_s",
            "baseline_events_per_s",
            "ratio",
            "paired_median_ratio",
            "ratio_cpu",
            "rebuild_peak_rss_mb",
            "baseline_peak_rss_mb",
            "median_ms",
            "baseline_median_ms",
            "catch_up_events_per_s",
        ],
    )


if __name__ == "__main__":
    main()
