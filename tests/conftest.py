"""Fixtures shared by every test: each storage test runs on SQLite and on PostgreSQL.

PostgreSQL tests use a schema of their own and drop it afterwards. Without a reachable
PostgreSQL they skip with the reason, except in CI (`CI=true`), where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.facade import Ledger

PG_URL = os.environ.get("LEDGER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MASTER_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # base64 of 32 ASCII bytes


def postgres_available() -> str | None:
    """None if PostgreSQL answers, else the reason it does not."""
    try:
        with psycopg.connect(_conninfo(PG_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_URL} is not reachable: {exc}".splitlines()[0]
    return None


def _conninfo(url: str) -> str:
    from ledger.config import DatabaseURL

    return DatabaseURL.parse(url).conninfo()


def require_postgres() -> None:
    reason = postgres_available()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI needs PostgreSQL: {reason}")
    pytest.skip(reason)


def close_connections(application_name: str) -> int:
    """Close, from the server's side, every PostgreSQL connection of this application
    name (what a restart or a failover does to them); how many there were. A process
    started with `PGAPPNAME` set gives its connections that name."""
    with psycopg.connect(_conninfo(PG_URL), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (application_name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        require_postgres()
    return str(request.param)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped after the test."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield schema
    with psycopg.connect(_conninfo(PG_URL), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def ledger_env(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment variables for a fresh ledger on the chosen backend."""
    env = {
        "LEDGER_HOME": str(tmp_path / "home"),
        "LEDGER_MASTER_KEY": MASTER_KEY,
    }
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schema")
        env["LEDGER_DATABASE_URL"] = f"{PG_URL}?schema={schema}"
    return env


@pytest.fixture
def settings(ledger_env: dict[str, str]) -> Settings:
    return Settings.from_env(ledger_env)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))


@pytest.fixture
def ledger(settings: Settings, clock: FixedClock) -> Iterator[Ledger]:
    with Ledger.open(settings, clock=clock) as opened:
        yield opened


@pytest.fixture
def cli_env(ledger_env: dict[str, str]) -> dict[str, str]:
    """A full process environment for running the `ledger` command in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(ledger_env)
    return env
