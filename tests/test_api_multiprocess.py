"""Several processes on one PostgreSQL database under concurrent load.

Two `ledger serve` processes (one of them with two uvicorn workers) take commands from 16
concurrent clients while every process sweeps: both servers every second and a separate
worker process in a loop. Thirty customers are past retention from the start, and their
subjects are written to during the sweeps; a command answered 409 (conflict) is sent
again, so every command is acknowledged in the end. The sweepers run until every old
customer is shredded. Afterwards, from the event store itself: no acknowledged event is
lost, none is duplicated (so a 409 wrote nothing), notification ids and versions have no
repeats or holes per subject, no scope was shredded twice, and the audit log verifies.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.api.process import ServerProcess
from ledger.config import Settings
from ledger.facade import Ledger
from tests.test_api_support import drop_schema, ledger_env, make_tokens

CLIENTS = 16
PER_CLIENT = 25
OLD = "2024-01-10T09:00:00+01:00"
RETRIES = 20  # sends of one command that the servers answer 409 (conflict)
SWEEP_DEADLINE = 120.0  # seconds the sweepers get to shred the old customers

WORKER = """
import pathlib, sys, time
from ledger.api.opening import open_ledger
stop = pathlib.Path(sys.argv[1])
with open_ledger() as ledger:
    while not stop.exists():
        ledger.sweep()
        time.sleep(0.05)
"""


@pytest.fixture
def pg_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    from tests.conftest import require_postgres

    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        yield ledger_env(tmp_path / "home", "postgres", schema)
    finally:
        drop_schema(schema)


def _customer(subject: str, at: str) -> list[dict[str, Any]]:
    base = {"subject": subject, "occurred_at": at}
    data = {"purpose": "customer_administration", "legal_basis": "contract", "source": "subject"}
    return [
        {
            "type": "register_subject",
            "kind": "customer",
            "purpose": "customer_administration",
            "legal_basis": "contract",
            "identifiers": {"phone": "+4511223344"},
            **base,
        },
        {"type": "collect", "category": "name", "value": "Old Customer", **data, **base},
        {"type": "collect", "category": "address", "value": "Nytorv 2", **data, **base},
        {"type": "start_relationship", "relationship": "customer", **base},
        {
            **base,
            "type": "end_relationship",
            "relationship": "customer",
            "occurred_at": "2024-03-31T12:00:00+02:00",
        },
    ]


def _process(subject: str, activity: str, at: str | None = None) -> dict[str, Any]:
    command = {
        "type": "process",
        "subject": subject,
        "purpose": "customer_administration",
        "activity": activity,
    }
    if at:
        command["occurred_at"] = at
    return command


def _shredded_customers(ledger: Ledger) -> set[str]:
    """Subjects whose `customer_data` scope was shredded, from the event store."""
    events = (ledger.app.mapper.to_domain_event(n) for n in ledger.notifications())
    return {
        str(e.originator_id)
        for e in events
        if type(e).__name__ == "ScopeShredded" and e.scope == "customer_data"
    }


def test_two_servers_and_a_worker_on_one_database(pg_env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings.from_env(pg_env)
    old = [str(uuid.uuid4()) for _ in range(30)]
    fresh = [str(uuid.uuid4()) for _ in range(CLIENTS)]
    with Ledger.open(settings) as ledger:
        results = ledger.execute_many([c for s in old for c in _customer(s, OLD)])
        assert all(r["ok"] for r in results)
    tokens = make_tokens(settings)
    headers = {"Authorization": f"Bearer {tokens['officer']}"}

    servers = [
        ServerProcess(pg_env, ["--sweep-every", "1", "--workers", "2"], log_dir=tmp_path),
        ServerProcess(pg_env, ["--sweep-every", "1"], log_dir=tmp_path),
    ]
    stop = tmp_path / "stop-worker"
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(stop)],
        env={**os.environ, **pg_env},
    )
    try:
        for server in servers:
            server.wait_ready()
        acknowledged: list[str] = []
        answers: Counter[int] = Counter()

        async def register(index: int, http: httpx.AsyncClient) -> None:
            command = {
                "type": "register_subject",
                "subject": fresh[index],
                "kind": "prospect",
                "purpose": "customer_administration",
                "legal_basis": "legitimate_interest",
            }
            answer = await http.post(f"{servers[index % 2].url}/v1/commands", json=command)
            assert answer.status_code == 200, answer.text

        async def client(index: int, http: httpx.AsyncClient) -> None:
            for i in range(PER_CLIENT):
                activity = f"c{index}-{i}"
                if i % 5 == 4:  # write to a subject that the sweepers are shredding
                    command = _process(old[(index * PER_CLIENT + i) % len(old)], activity, OLD)
                else:
                    command = _process(fresh[(index + i) % CLIENTS], activity)
                # 409: the subject kept changing under the server's retries and nothing
                # was written; the client sends it again, as the error says to (an event
                # written twice would show below). Any other answer ends the command.
                for attempt in range(RETRIES):
                    answer = await http.post(
                        f"{servers[(index + i + attempt) % 2].url}/v1/commands", json=command
                    )
                    answers[answer.status_code] += 1
                    if answer.status_code != 409:
                        break
                    await asyncio.sleep(0.01 * (attempt + 1))
                if answer.status_code == 200:
                    acknowledged.append(activity)

        async def load() -> None:
            async with httpx.AsyncClient(headers=headers, timeout=60) as http:
                await asyncio.gather(*(register(i, http) for i in range(CLIENTS)))
                await asyncio.gather(*(client(i, http) for i in range(CLIENTS)))

        asyncio.run(load())
        # The sweepers go on while the old customers are not all shredded (however slow
        # the machine): wait for that, with a generous deadline, before stopping them.
        with Ledger.open(settings) as ledger:
            deadline = time.monotonic() + SWEEP_DEADLINE
            while _shredded_customers(ledger) != set(old):
                assert time.monotonic() < deadline, (
                    f"not every old customer was shredded within {SWEEP_DEADLINE} s: "
                    f"{len(_shredded_customers(ledger))} of {len(old)}"
                )
                time.sleep(0.2)
    finally:
        stop.touch()
        for server in servers:
            server.stop()
        assert worker.wait(30) == 0

    assert answers[200] == len(acknowledged) and set(answers) <= {200, 409}, answers
    assert len(acknowledged) == CLIENTS * PER_CLIENT, answers  # none lost to conflicts

    with Ledger.open(settings) as ledger:
        notifications = list(ledger.notifications())
        ids = [n.id for n in notifications]
        assert ids == sorted(set(ids)), "notification ids repeat or go backwards"
        versions: dict[str, list[int]] = {}
        for n in notifications:
            versions.setdefault(str(n.originator_id), []).append(n.originator_version)
        for originator, seen in versions.items():
            assert seen == list(range(1, len(seen) + 1)), f"versions of {originator}: {seen}"
        events = [ledger.app.mapper.to_domain_event(n) for n in notifications]
        # The servers' background processes sealed while they ran; seal the rest and check.
        from ledger.audit.service import seal, verify

        seal(ledger)
        audit = verify(ledger)
        assert audit.ok, audit.failures
        assert audit.leaves == len(notifications) and audit.unsealed == 0

    processed = Counter(e.activity for e in events if type(e).__name__ == "DataProcessed")
    assert set(processed) == set(acknowledged), "an acknowledged event is missing, or extra"
    assert all(count == 1 for count in processed.values()), "an event was written twice"

    shreds = Counter(
        (str(e.originator_id), e.scope, tuple(e.kids))
        for e in events
        if type(e).__name__ == "ScopeShredded"
    )
    assert all(count == 1 for count in shreds.values()), "a scope was shredded twice"
    shredded_subjects = {subject for subject, scope, _ in shreds if scope == "customer_data"}
    assert shredded_subjects == set(old)
