"""Group commit, background work and shutdown of the HTTP service, on both backends.

A database failure is injected into a real uvicorn server running in a thread of the test
process (so the test can reach its application); shutdown and the sweeper are exercised on
`ledger serve` subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from eventsourcing.persistence import OperationalError

from ledger.api.app import create_app
from ledger.api.options import ServerOptions
from ledger.api.process import ServerProcess, free_port
from ledger.config import Settings
from ledger.facade import Ledger
from tests.test_api_support import drop_schema, ledger_env, make_tokens


class ThreadServer:
    """uvicorn serving `create_app(...)` in a thread of this process."""

    def __init__(self, settings: Settings, options: ServerOptions) -> None:
        self.app = create_app(settings, options)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def env(backend: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    schema = f"t_{uuid.uuid4().hex[:16]}" if backend == "postgres" else None
    try:
        yield ledger_env(tmp_path / "home", backend, schema)
    finally:
        if schema:
            drop_schema(schema)


def _register(subject: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "register_subject",
        "subject": subject,
        "kind": "customer",
        "purpose": "customer_administration",
        "legal_basis": "contract",
        **extra,
    }


async def _behind_a_held_group(
    server: ThreadServer,
    headers: dict[str, str],
    first: str,
    group: list[str],
    saving: threading.Event,
    queued: threading.Event,
) -> tuple[httpx.Response, list[httpx.Response]]:
    """Register `first`; while its save is held (the test's `save` sets `saving`, then
    waits for `queued`), send one registration for each of `group`, so that they queue
    up and run as one group once `queued` is set."""
    executor = server.app.state.executor
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as c:
        head = asyncio.create_task(c.post("/v1/commands", json=_register(first)))
        assert await asyncio.to_thread(saving.wait, 10)
        tail = [asyncio.create_task(c.post("/v1/commands", json=_register(s))) for s in group]
        deadline = time.monotonic() + 10
        while len(executor._queue) < len(group) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        queued.set()
        return await head, list(await asyncio.gather(*tail))


def test_database_failure_fails_only_its_group(env: dict[str, str]) -> None:
    """A slow group lets ten commands queue; the database then fails their group: all ten
    callers get 503 and none of them is written. The groups before and after are fine."""
    settings = Settings.from_env(env)
    tokens = make_tokens(settings)
    headers = {"Authorization": f"Bearer {tokens['service']}"}
    with ThreadServer(settings, ServerOptions(sweep_every=None, tick=0)) as server:
        app = server.app.state.ledger.app
        real_save = app.save
        calls = {"n": 0}
        queued, saving = threading.Event(), threading.Event()

        def save(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                saving.set()
                queued.wait(10)  # hold the first group until the others have queued
                return real_save(*args, **kwargs)
            if calls["n"] == 2:
                raise OperationalError("injected: the database went away")
            return real_save(*args, **kwargs)

        app.save = save
        first, doomed, later = (
            str(uuid.uuid4()),
            [str(uuid.uuid4()) for _ in range(10)],
            str(uuid.uuid4()),
        )

        head, tail = asyncio.run(
            _behind_a_held_group(server, headers, first, doomed, saving, queued)
        )
        assert head.status_code == 200, head.text
        for answer in tail:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "conflict"
        assert calls["n"] == 2  # the ten were one group
        with httpx.Client(base_url=server.url, headers=headers) as client:
            assert client.post("/v1/commands", json=_register(later)).status_code == 200
    with Ledger.open(settings) as ledger:
        assert ledger.app.subject_exists(first) and ledger.app.subject_exists(later)
        assert not any(ledger.app.subject_exists(s) for s in doomed)
        registered = {str(n.originator_id) for n in ledger.notifications()}
        assert registered == {first, later}


@pytest.mark.parametrize("group_commit", [True, False], ids=["group", "one_by_one"])
def test_a_command_the_code_cannot_handle_fails_alone(
    env: dict[str, str], group_commit: bool
) -> None:
    """A fault that is not the database's (a bug, met by one command) fails its group; the
    commands of that group are then run one by one, so only that command fails (500) and
    its neighbours are written (once one caller's odd value made every other caller of its
    group get a 500). Without group commit every command runs alone, and the same holds."""
    settings = Settings.from_env(env)
    tokens = make_tokens(settings)
    headers = {"Authorization": f"Bearer {tokens['service']}"}
    with ThreadServer(
        settings, ServerOptions(sweep_every=None, tick=0, group_commit=group_commit)
    ) as server:
        app = server.app.state.ledger.app
        real_save, real_register = app.save, app.handlers._do_register_subject
        calls = {"n": 0}
        queued, saving = threading.Event(), threading.Event()
        first, poisoned = str(uuid.uuid4()), str(uuid.uuid4())
        neighbours = [str(uuid.uuid4()) for _ in range(6)]

        def save(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                saving.set()
                queued.wait(10)  # hold the first group until the others have queued
            return real_save(*args, **kwargs)

        def register(uow: Any, sealer: Any, command: Any, occurred_at: Any) -> Any:
            if command.subject == poisoned:
                raise TypeError("injected: a value the code cannot handle")
            return real_register(uow, sealer, command, occurred_at)

        app.save, app.handlers._do_register_subject = save, register
        group = [*neighbours[:3], poisoned, *neighbours[3:]]

        head, tail = asyncio.run(
            _behind_a_held_group(server, headers, first, group, saving, queued)
        )
        assert head.status_code == 200, head.text
        answers = dict(zip(group, tail, strict=True))
        assert answers[poisoned].status_code == 500, answers[poisoned].text
        assert answers[poisoned].json()["error"]["code"] == "conflict"
        for subject in neighbours:
            assert answers[subject].status_code == 200, answers[subject].text
    with Ledger.open(settings) as ledger:
        registered = {str(n.originator_id) for n in ledger.notifications()}
        assert registered == {first, *neighbours}


def test_background_work_projects_and_seals_every_tick(env: dict[str, str]) -> None:
    """Events written behind the server's back (the Python API neither projects nor seals)
    reach the read models and a signed checkpoint through the background work alone, round
    after round."""
    from ledger.audit import service

    settings = Settings.from_env(env)

    def wait_until_current(ledger: Ledger) -> None:
        """Until the read models' position and the latest checkpoint reach the head."""
        head = ledger.max_position()
        store = service._open_store(ledger)
        try:
            deadline = time.monotonic() + 30
            while True:
                with store.reader() as s:
                    latest = s.latest_checkpoint()
                sealed = latest.tree_size if latest is not None else 0
                projected = ledger.read_models.position()
                if sealed == head and projected >= head:
                    return
                assert time.monotonic() < deadline, (head, sealed, projected)
                time.sleep(0.05)
        finally:
            store.close()

    with Ledger.open(settings) as ledger:
        assert ledger.execute(_register(str(uuid.uuid4())))["ok"]
        assert ledger.read_models.position() == 0
        with ThreadServer(settings, ServerOptions(sweep_every=None, tick=0.05)) as server:
            wait_until_current(ledger)
            for _ in range(2):  # written while it runs: only a later round can take them
                assert ledger.execute(_register(str(uuid.uuid4())))["ok"]
                wait_until_current(ledger)
            assert server.app.state.background.last_error is None
        assert service.verify(ledger).ok


def test_background_sweeper_shreds_what_is_due(env: dict[str, str], tmp_path: Path) -> None:
    """A customer whose relationship ended in 2024 is past retention: the server's sweeper
    shreds its customer data on its own, and keeps the invoice (bookkeeping)."""
    settings = Settings.from_env(env)
    subject = str(uuid.uuid4())
    at = "2024-01-10T09:00:00+01:00"
    with Ledger.open(settings) as ledger:
        for command in (
            _register(subject, identifiers={"phone": "+4511223344"}, occurred_at=at),
            *(
                {
                    "type": "collect",
                    "subject": subject,
                    "category": category,
                    "value": value,
                    "purpose": "customer_administration",
                    "legal_basis": "contract",
                    "source": "subject",
                    "occurred_at": at,
                }
                for category, value in (("name", "Søren Kierkegaard"), ("address", "Nytorv 2"))
            ),
            {
                "type": "start_relationship",
                "subject": subject,
                "relationship": "customer",
                "occurred_at": at,
            },
            {
                "type": "end_relationship",
                "subject": subject,
                "relationship": "customer",
                "occurred_at": "2024-03-31T12:00:00+02:00",
            },
        ):
            assert ledger.execute(command)["ok"], command
    tokens = make_tokens(settings)
    headers = {"Authorization": f"Bearer {tokens['auditor']}"}
    with ServerProcess(env, ["--sweep-every", "1"], log_dir=tmp_path) as server:
        deadline = time.monotonic() + 20
        shredded: list[Any] = []
        while time.monotonic() < deadline and not shredded:
            view = httpx.get(f"{server.url}/v1/subjects/{subject}", headers=headers).json()
            shredded = [r for r in view["retention"] if r["shredded_at"]]
            time.sleep(0.2)
    assert [r["scope"] for r in shredded] == ["customer_data"]
    assert all(d["erased"] for d in view["data"] if d["category"] == "name")


def test_graceful_shutdown_finishes_in_flight_groups(env: dict[str, str], tmp_path: Path) -> None:
    """SIGTERM while 120 commands are in flight: every acknowledged command is written, and
    the server wrote exactly the commands its writer thread accepted."""
    settings = Settings.from_env(env)
    tokens = make_tokens(settings)
    headers = {"Authorization": f"Bearer {tokens['service']}"}
    subjects = [str(uuid.uuid4()) for _ in range(120)]
    server = ServerProcess(env, ["--no-sweep"], log_dir=tmp_path).wait_ready()

    async def run() -> list[Any]:
        first_acknowledged = asyncio.Event()
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as c:

            async def one(i: int) -> Any:
                await asyncio.sleep(i * 0.004)
                answer = await c.post("/v1/commands", json=_register(subjects[i]))
                if answer.status_code == 200:
                    first_acknowledged.set()
                return answer

            tasks = [asyncio.create_task(one(i)) for i in range(len(subjects))]
            # Stop once the server has proved it is writing, not after a fixed delay: on a
            # slow machine no command had been answered yet 0.1 s in.
            await asyncio.wait_for(first_acknowledged.wait(), timeout=20)
            await asyncio.to_thread(server.stop)
            return list(await asyncio.gather(*tasks, return_exceptions=True))

    try:
        answers = asyncio.run(run())
    finally:
        code = server.stop()
    # uvicorn finishes, then re-raises the SIGTERM it caught: -15 is its clean exit.
    assert code in (0, -15), server.output()
    assert "Application shutdown complete" in server.output()
    acknowledged = {
        s
        for s, a in zip(subjects, answers, strict=True)
        if isinstance(a, httpx.Response) and a.status_code == 200
    }
    assert acknowledged, "no command made it before the shutdown"
    for answer in answers:
        assert not isinstance(answer, httpx.Response) or answer.status_code in (200, 503)
    with Ledger.open(settings) as ledger:
        written = {str(n.originator_id) for n in ledger.notifications()}
    assert acknowledged <= written
    assert settings.log_path is not None
    stopped = [
        json.loads(line)
        for line in settings.log_path.read_text().splitlines()
        if '"server_stopped"' in line
    ]
    assert stopped and stopped[-1]["commands"] == len(written)
