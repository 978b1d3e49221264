"""Shared benchmark plumbing: fresh ledgers per backend, timing, the table and the JSON file.

Every figure is reported beside a baseline measured in the same run; ratios are what count
on a shared machine.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from rich.console import Console
from rich.table import Table

from ledger.config import DatabaseURL, Settings

PG_URL = os.environ.get("LEDGER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
MASTER_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
# Where the JSON goes: `benchmarks/results/`, or elsewhere for a smoke run (`--quick`),
# whose small figures must not replace the ones quoted.
RESULTS = Path(os.environ.get("LEDGER_BENCH_RESULTS") or Path(__file__).with_name("results"))


def postgres_reachable() -> bool:
    try:
        with psycopg.connect(DatabaseURL.parse(PG_URL).conninfo(), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@contextmanager
def fresh_settings(backend: str) -> Iterator[tuple[Settings, dict[str, str]]]:
    """Settings (and the env dict behind them) for an empty ledger; removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    env = {"LEDGER_HOME": str(home), "LEDGER_MASTER_KEY": MASTER_KEY}
    schema = ""
    if backend == "postgres":
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        env["LEDGER_DATABASE_URL"] = f"{PG_URL}?schema={schema}"
    try:
        yield Settings.from_env(env), env
    finally:
        shutil.rmtree(home, ignore_errors=True)
        if schema:
            with psycopg.connect(DatabaseURL.parse(PG_URL).conninfo(), autocommit=True) as c:
                c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(name: str, title: str, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Print a table for people and write JSON for programs."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "measured_at": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "rows": rows,
    }
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 10 else f"{value:,.0f}"
    return "" if value is None else str(value)
