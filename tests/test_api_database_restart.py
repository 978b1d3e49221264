"""A running `ledger serve` outlives its PostgreSQL server closing every connection (a
restart, a failover, an idle timeout): a request may be answered 503 "retry" while the
dead connections are found, and a few sends later everything works again: commands,
queries, tokens (the token store once failed every request from then on). While the
database refuses it altogether, requests fail at once with 503, and work again once it
is back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.api.process import ServerProcess
from ledger.config import Settings
from tests.conftest import Outage
from tests.test_api_support import drop_schema, ledger_env, make_tokens, register

RETRIES = 10  # sends of one request; each dead pooled connection costs at most one


@pytest.fixture
def server(
    tmp_path: Path, outage: Outage
) -> Iterator[tuple[ServerProcess, dict[str, str], Outage]]:
    """A server connected as a role of the test's own (`Outage`), which asks the token
    store on every request (no cached answers)."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    env = ledger_env(tmp_path / "home", "postgres", schema)
    tokens = make_tokens(Settings.from_env(env))
    env["LEDGER_DATABASE_URL"] = outage.url(env["LEDGER_DATABASE_URL"])
    env["LEDGER_API_TOKEN_CACHE_SECONDS"] = "0"
    process = ServerProcess(env, ["--no-sweep"], log_dir=tmp_path)
    try:
        yield process.wait_ready(), tokens, outage
    finally:
        process.stop()
        drop_schema(schema)


def _clients(process: ServerProcess, tokens: dict[str, str]) -> dict[str, httpx.Client]:
    return {
        role: httpx.Client(base_url=process.url, headers={"Authorization": f"Bearer {token}"})
        for role, token in tokens.items()
    }


def _collect(subject: str) -> dict[str, Any]:
    return {
        "type": "collect",
        "subject": subject,
        "category": "address",
        "value": "Amagerbrogade 1, 2300 København S",
        "purpose": "customer_administration",
        "legal_basis": "contract",
        "source": "subject",
    }


def _until_answered(send: Callable[[], httpx.Response]) -> tuple[httpx.Response, int]:
    """Send until the answer is not 503; the answer and how many 503s came first."""
    for failures in range(RETRIES):
        answer = send()
        if answer.status_code != 503:
            return answer, failures
        assert answer.json()["error"]["code"] == "conflict"  # "retry", nothing written
    raise AssertionError(f"still 503 after {RETRIES} sends")


def test_the_server_works_again_after_the_database_closed_every_connection(
    server: tuple[ServerProcess, dict[str, str], Outage],
) -> None:
    process, tokens, outage = server
    clients = _clients(process, tokens)
    service, officer, admin = clients["service"], clients["officer"], clients["admin"]
    subject = register(service)
    assert officer.get(f"/v1/subjects/{subject}").status_code == 200
    for _ in range(2):  # and again, on the connections made the first time
        assert outage.begin() >= 2
        outage.end()  # logins allowed again at once: only the connections are gone
        collected, _ = _until_answered(lambda: service.post("/v1/commands", json=_collect(subject)))
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
    for client in clients.values():
        client.close()


def test_while_the_database_refuses_the_server_requests_fail_at_once_with_503(
    server: tuple[ServerProcess, dict[str, str], Outage],
) -> None:
    process, tokens, outage = server
    clients = _clients(process, tokens)
    service, officer = clients["service"], clients["officer"]
    subject = register(service)
    before = officer.get(f"/v1/subjects/{subject}/history").json()
    outage.begin()
    for send in (
        lambda: service.post("/v1/commands", json=_collect(subject)),
        lambda: officer.get(f"/v1/subjects/{subject}"),
    ):
        started = time.monotonic()
        answer = send()
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "conflict"
        assert time.monotonic() - started < 5  # at once, not after the pool's timeouts
    outage.end()
    shown, _ = _until_answered(lambda: officer.get(f"/v1/subjects/{subject}/history"))
    assert shown.json() == before  # the command sent during the outage wrote nothing
    collected, _ = _until_answered(lambda: service.post("/v1/commands", json=_collect(subject)))
    assert collected.json()["ok"] is True
    for client in clients.values():
        client.close()
