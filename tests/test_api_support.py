"""Shared plumbing of the HTTP tests: real `ledger serve` processes on free ports.

Not a test module of its own; the HTTP test modules import its fixtures.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ledger.api.process import ServerProcess
from ledger.api.tokens import ROLES, TokenStore
from ledger.config import Settings
from tests.conftest import MASTER_KEY, PG_URL, _conninfo, require_postgres


def ledger_env(home: Path, backend: str, schema: str | None) -> dict[str, str]:
    env = {"LEDGER_HOME": str(home), "LEDGER_MASTER_KEY": MASTER_KEY}
    if backend == "postgres":
        assert schema
        env["LEDGER_DATABASE_URL"] = f"{PG_URL}?schema={schema}"
    return env


def drop_schema(schema: str) -> None:
    with psycopg.connect(_conninfo(PG_URL), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def make_tokens(settings: Settings) -> dict[str, str]:
    """One token per role, named after it ('service-token' ...)."""
    store = TokenStore.open(settings)
    try:
        return {role: store.create(role, f"{role}-token")[0] for role in ROLES}
    finally:
        store.close()


@dataclass
class Served:
    """A running server with one token per role, and the ledger's settings."""

    url: str
    env: dict[str, str]
    settings: Settings
    tokens: dict[str, str]
    servers: list[ServerProcess] = field(default_factory=list)

    def client(self, role: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def log_text(self) -> str:
        path = self.settings.log_path
        assert path is not None
        return path.read_text(encoding="utf-8") if path.exists() else ""


def serve(home: Path, backend: str, schema: str | None, args: list[str]) -> Served:
    env = ledger_env(home, backend, schema)
    settings = Settings.from_env(env)
    tokens = make_tokens(settings)
    server = ServerProcess(env, args, log_dir=home.parent).wait_ready()
    return Served(server.url, env, settings, tokens, [server])


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        require_postgres()
    return str(request.param)


@pytest.fixture(scope="module")
def served(api_backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server per backend for a whole module (no sweeper: tests control the time)."""
    schema = f"t_{uuid.uuid4().hex[:16]}" if api_backend == "postgres" else None
    home = tmp_path_factory.mktemp(f"api-{api_backend}") / "home"
    app = serve(home, api_backend, schema, ["--no-sweep"])
    try:
        yield app
    finally:
        for server in app.servers:
            server.stop()
        if schema:
            drop_schema(schema)


def register(client: httpx.Client, **extra: Any) -> str:
    """A fresh customer; returns its id."""
    subject = str(uuid.uuid4())
    command = {
        "type": "register_subject",
        "subject": subject,
        "kind": "customer",
        "purpose": "customer_administration",
        "legal_basis": "contract",
        **extra,
    }
    answer = client.post("/v1/commands", json=command)
    assert answer.status_code == 200, answer.text
    return subject
