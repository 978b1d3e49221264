"""Every story in ../shared/scenarios over HTTP, on SQLite and PostgreSQL.

Commands go to `POST /v1/commands` with an officer's token, `@show` is
`GET /v1/subjects/{id}?reveal=true&purpose=...`, and `@sweep` runs the facade's sweeper
on the same database at the line's time (the server itself runs with `--no-sweep`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.api.opening import open_ledger
from ledger.clock import FixedClock, parse_instant
from tests.scenarios import run_scenario, scenario_files
from tests.test_api_support import Served, drop_schema, serve

FILES = scenario_files()


class HTTPDriver:
    def __init__(self, served: Served) -> None:
        self.served = served
        self.client = served.client("officer")

    def execute(self, command: dict[str, Any]) -> dict[str, Any]:
        answer = self.client.post("/v1/commands", json=command)
        result: dict[str, Any] = answer.json()
        assert (answer.status_code == 200) == bool(result["ok"]), answer.text
        return result

    def sweep(self, now: str) -> dict[str, Any]:
        moment = parse_instant(now)
        # the server's background process may be creating its tables this very moment
        with open_ledger(self.served.settings, clock=FixedClock(moment)) as ledger:
            return ledger.sweep(moment)

    def show(self, subject: str) -> dict[str, Any]:
        answer = self.client.get(
            f"/v1/subjects/{subject}", params={"reveal": "true", "purpose": "scenario check"}
        )
        result: dict[str, Any] = answer.json()
        return result


@pytest.fixture
def http_ledger(backend: str, tmp_path: Path) -> Iterator[Served]:
    schema = f"t_{uuid.uuid4().hex[:16]}" if backend == "postgres" else None
    served = serve(tmp_path / "home", backend, schema, ["--no-sweep"])
    try:
        yield served
    finally:
        for server in served.servers:
            server.stop()
        if schema:
            drop_schema(schema)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario_over_http(path: Path, http_ledger: Served) -> None:
    driver = HTTPDriver(http_ledger)
    try:
        assert run_scenario(path, driver) == []
    finally:
        driver.client.close()
    with httpx.Client(base_url=http_ledger.url) as client:
        assert client.get("/healthz").json()["ok"] is True
