"""Fixtures shared by every test: each storage test runs on SQLite and on PostgreSQL.

PostgreSQL tests use a schema of their own and drop it afterwards. Without a reachable
PostgreSQL they skip with the reason, except in CI (`CI=true`), where that is a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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


@contextmanager
def ledger_process(
    ledger_env: dict[str, str], args: list[str], output: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m ledger ARGS` in the background on this ledger, its stdout piped and its
    stderr in `output`; killed at the end if still running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(ledger_env)
    with output.open("wb") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "ledger", *args], env=env, stdout=subprocess.PIPE, stderr=errors
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()


def _terminate(column: str, value: str) -> int:
    with psycopg.connect(_conninfo(PG_URL), autocommit=True) as admin:
        row = admin.execute(
            f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {column} = %s",
            (value,),
        ).fetchone()
    assert row is not None
    return int(row[0])


class Outage:
    """A PostgreSQL login role of a test's own, whose logins the test can refuse for a
    while: to a process connected as it, the database is down (its connections closed,
    every new one refused) and then back, while the test's own connections work."""

    def __init__(self, role: str) -> None:
        self.role = role

    def url(self, ledger_url: str) -> str:
        """The ledger's database URL, connecting as this role (trust authentication)."""
        parts = urlsplit(ledger_url)
        host = parts.hostname or "127.0.0.1"
        netloc = f"{self.role}@{host}:{parts.port or 5432}"
        return urlunsplit(parts._replace(netloc=netloc))

    def worker_env(self, ledger_env: dict[str, str]) -> dict[str, str]:
        """The environment of a worker process connecting as this role. The library waits
        up to 30 s for a pooled connection, ten times, before an error reaches the worker;
        a second keeps the outage a test needs short."""
        return {
            **ledger_env,
            "LEDGER_DATABASE_URL": self.url(ledger_env["LEDGER_DATABASE_URL"]),
            "POSTGRES_CONNECT_TIMEOUT": "1",
        }

    def _admin(self, sql: str) -> None:
        with psycopg.connect(_conninfo(PG_URL), autocommit=True) as admin:
            admin.execute(sql)

    def begin(self) -> int:
        """Refuse new logins and close the open connections; how many were closed."""
        self._admin(f'ALTER ROLE "{self.role}" NOLOGIN')
        return _terminate("usename", self.role)

    def end(self) -> None:
        self._admin(f'ALTER ROLE "{self.role}" LOGIN')


@pytest.fixture
def outage() -> Iterator[Outage]:
    """A role of the test's own (a superuser: no grants to keep in step), dropped after."""
    require_postgres()
    made = Outage(f"t_{uuid.uuid4().hex[:12]}")
    made._admin(f'CREATE ROLE "{made.role}" LOGIN SUPERUSER')
    try:
        yield made
    finally:
        made.begin()
        made._admin(f'REASSIGN OWNED BY "{made.role}" TO CURRENT_USER')
        made._admin(f'DROP OWNED BY "{made.role}"')
        made._admin(f'DROP ROLE "{made.role}"')


def logged(settings: Settings, event: str) -> int:
    """How many lines of the ledger's log are this event."""
    path = settings.log_path
    if path is None or not path.exists():
        return 0
    marker = f'"event":"{event}"'
    return sum(marker in line for line in path.read_text(encoding="utf-8").splitlines())


def until_logged(
    settings: Settings,
    event: str,
    *,
    more_than: int,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = 60,
) -> None:
    """Wait until the log holds more lines of this event than it did (and the process
    that should write them is still running)."""
    deadline = time.monotonic() + timeout
    while logged(settings, event) <= more_than:
        assert process is None or process.poll() is None, "the process exited"
        assert time.monotonic() < deadline, f"no new {event} in the log"
        time.sleep(0.05)


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
