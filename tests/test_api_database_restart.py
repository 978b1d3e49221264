"""A running `ledger serve` outlives its PostgreSQL server closing every connection (a
restart, a failover, an idle timeout): a request may be answered 503 "retry" while the
dead connections are found, and a few sends later everything works again: commands,
queries, tokens (the token store once failed every request from then on)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ledger.api.process import ServerProcess
from ledger.config import Settings
from tests.conftest import close_connections, require_postgres
from tests.test_api_support import drop_schema, ledger_env, make_tokens, register

RETRIES = 10  # sends of one request; each dead pooled connection costs at most one


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, str], str]]:
    """A server whose connections carry an application name of their own (libpq reads
    `PGAPPNAME`), so that the test closes exactly these."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    app_name = f"ledger-restart-{uuid.uuid4().hex[:8]}"
    env = ledger_env(tmp_path / "home", "postgres", schema)
    tokens = make_tokens(Settings.from_env(env))
    process = ServerProcess({**env, "PGAPPNAME": app_name}, ["--no-sweep"], log_dir=tmp_path)
    try:
        yield process.wait_ready(), tokens, app_name
    finally:
        process.stop()
        drop_schema(schema)


def _until_answered(send: Callable[[], httpx.Response]) -> tuple[httpx.Response, int]:
    """Send until the answer is not 503; the answer and how many 503s came first."""
    for failures in range(RETRIES):
        answer = send()
        if answer.status_code != 503:
            return answer, failures
        assert answer.json()["error"]["code"] == "conflict"  # "retry", nothing written
    raise AssertionError(f"still 503 after {RETRIES} sends")


def test_the_server_works_again_after_the_database_closed_every_connection(
    server: tuple[ServerProcess, dict[str, str], str],
) -> None:
    process, tokens, app_name = server
    service = httpx.Client(
        base_url=process.url, headers={"Authorization": f"Bearer {tokens['service']}"}
    )
    officer = httpx.Client(
        base_url=process.url, headers={"Authorization": f"Bearer {tokens['officer']}"}
    )
    admin = httpx.Client(
        base_url=process.url, headers={"Authorization": f"Bearer {tokens['admin']}"}
    )
    with service, officer, admin:
        subject = register(service)
        assert officer.get(f"/v1/subjects/{subject}").status_code == 200
        for _ in range(2):  # and again, on the connections made the first time
            assert close_connections(app_name) >= 2
            collected, _ = _until_answered(
                lambda: service.post(
                    "/v1/commands",
                    json={
                        "type": "collect",
                        "subject": subject,
                        "category": "address",
                        "value": "Amagerbrogade 1, 2300 København S",
                        "purpose": "customer_administration",
                        "legal_basis": "contract",
                        "source": "subject",
                    },
                ),
            )
            assert collected.status_code == 200 and collected.json()["ok"] is True
            shown, _ = _until_answered(lambda: officer.get(f"/v1/subjects/{subject}"))
            assert shown.status_code == 200
            assert any(item["category"] == "address" for item in shown.json()["data"])
            listed, _ = _until_answered(lambda: admin.get("/v1/tokens"))
            assert listed.status_code == 200
        # once the dead connections are gone, nothing fails any more
        for _ in range(5):
            assert officer.get(f"/v1/subjects/{subject}").status_code == 200
            assert officer.get(f"/v1/subjects/{subject}/history").status_code == 200
