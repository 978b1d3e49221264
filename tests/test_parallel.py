"""A large atomic batch split with a second process (`ledger.parallel`) is written as if
one process had run it: the same results, the same subjects, every event once, the
values sealed so that they open; a rejection anywhere writes nothing and names the
command one process would have named (a command that does not parse before any that the
rules refuse), also after events were inserted ahead of the rest; a second process
that dies costs a retry, not the batch; and the writer's transaction outlives a share
that is slow to come. SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import itertools
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.bench_append import onboarding
from ledger.app import LedgerApplication
from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.eventrows import EventRow
from ledger.facade import Ledger
from ledger.parallel import (
    PARALLEL_FROM,
    REPLY_PIPE_BYTES,
    SecondProcess,
    Share,
    _receive,
    _RowsSender,
    split_by_subject,
)
from ledger.persistence import application_env
from tests.conftest import PG_URL, _conninfo, require_postgres

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def _batch(customers: int, start: int = 0) -> list[dict[str, Any]]:
    """The benchmark's onboarding mix: seven commands (nine events) a new customer."""
    return [command for i in range(start, start + customers) for command in onboarding(i)]


@pytest.fixture
def twin(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A second, empty ledger of the same kind, for one process to run what the other
    splits."""
    if settings.database.backend == "sqlite":
        yield Settings.from_env(
            {"LEDGER_HOME": str(tmp_path / "twin"), "LEDGER_MASTER_KEY": settings.master_key or ""}
        )
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    database = dataclasses.replace(settings.database, schema=schema)
    yield dataclasses.replace(
        settings, home=tmp_path / "twin", database=database, keystore=database
    )
    with psycopg.connect(_conninfo(PG_URL), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _warmed_up(ledger: Ledger) -> SecondProcess:
    """The ledger's second process, started and ready: the next large batch is split."""
    helper = ledger.app.second_process
    assert helper is not None
    helper.warm_up()
    return helper


def _same_facts(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An event's metadata without what differs by nature: the time it was stored and
    its sealing (fresh keys and nonces)."""
    return [{k: v for k, v in e.items() if k not in ("recorded_at", "sealed")} for e in history]


def test_a_split_batch_is_written_as_one_process_writes_it(
    settings: Settings, twin: Settings
) -> None:
    commands = _batch(60)  # 420 commands
    assert len(commands) >= PARALLEL_FROM
    clock = FixedClock(NOW)
    with (
        Ledger.open(settings, clock=clock) as split,
        Ledger.open(twin, clock=clock, batch_processes=1) as single,
    ):
        assert split.app.second_process is not None and single.app.second_process is None
        split.app.second_process.warm_up()
        results = split.execute_many(commands)
        assert split.app.second_process.shares_sent == 1  # it did take a share
        assert results == single.execute_many(commands)
        assert all(r["ok"] for r in results)
        assert split.max_position() == single.max_position() == 60 * 9  # each event once
        subjects = sorted({c["subject"] for c in commands})
        assert sorted(split.subject_ids()) == subjects
        for subject in subjects:
            assert split.subject(subject) == single.subject(subject)
            assert _same_facts(split.history(subject)) == _same_facts(single.history(subject))
        # values sealed by either process open, and find their subjects
        for i in (0, 59):
            subject = commands[7 * i]["subject"]
            shown = split.subject(subject, reveal=True, purpose="kontrol")
            assert shown == single.subject(subject, reveal=True, purpose="kontrol")
            assert {d["category"]: d["value"] for d in shown["data"]}["name"] == f"Kunde {i}"
            assert split.find("email", f"kunde{i}@example.dk") == [subject]
        records = split.keystore.records()
        assert len(records) == 2 * 60  # customer data and bookkeeping, once each
        assert len({r.kid for r in records}) == len(records)
        # and the next batch, on subjects the other process made, goes on from them
        more = [
            {
                "type": "withdraw_consent",
                "subject": subject,
                "purpose": "marketing",
            }
            for subject in subjects[: PARALLEL_FROM + 10]
        ]
        assert split.execute_many(more) == single.execute_many(more)
        for subject in subjects:
            assert split.subject(subject) == single.subject(subject)


def _rejects(subject: str) -> dict[str, Any]:
    """A command the rules refuse: health data without explicit consent."""
    return {
        "type": "collect",
        "subject": subject,
        "category": "health",
        "value": "Diabetes type 1",
        "purpose": "customer_administration",
        "legal_basis": "contract",
        "source": "subject",
    }


def _with_rejections(commands: list[dict[str, Any]], refused: set[str]) -> list[dict[str, Any]]:
    """The batch with a refused command after the last command of each subject named."""
    out: list[dict[str, Any]] = []
    for i, command in enumerate(commands):
        out.append(command)
        last = i + 1 == len(commands) or commands[i + 1]["subject"] != command["subject"]
        if last and command["subject"] in refused:
            out.append(_rejects(command["subject"]))
    return out


@pytest.mark.parametrize("earliest_in", ["first share", "second share"])
def test_a_rejection_in_either_share_writes_nothing_and_names_the_earliest(
    ledger: Ledger, earliest_in: str
) -> None:
    commands = _batch(60)
    subjects = [c["subject"] for c in commands[::7]]
    bad = _with_rejections(commands, {subjects[10], subjects[40]})
    first, _ = split_by_subject(list(enumerate(bad)))
    in_first = {c["subject"] for _, c in first}
    if (subjects[10] in in_first) != (earliest_in == "first share"):
        bad = _with_rejections(commands, {subjects[11], subjects[40]})
        first, _ = split_by_subject(list(enumerate(bad)))
        in_first = {c["subject"] for _, c in first}
    refused = [i for i, c in enumerate(bad) if c.get("category") == "health"]
    assert len(refused) == 2
    shares = {bad[i]["subject"] in in_first for i in refused}
    assert shares == {True, False}  # one in each process's share
    assert (bad[refused[0]]["subject"] in in_first) == (earliest_in == "first share")

    helper = _warmed_up(ledger)
    results = ledger.execute_many(bad)
    assert helper.shares_sent == 1  # the batch was split
    assert results[refused[0]]["error"]["code"] == "explicit_consent_required"
    assert "rolled_back" not in results[refused[0]]
    assert all(r.get("rolled_back") for i, r in enumerate(results) if i != refused[0])
    assert ledger.max_position() == 0
    assert ledger.keystore.records() == []
    assert ledger.find("email", "kunde0@example.dk") == []
    assert all(r["ok"] for r in ledger.execute_many(commands))  # and then it goes through
    # (on PostgreSQL the ids the rolled-back parts drew are not given again: count them)
    assert sum(1 for _ in ledger.notifications()) == 60 * 9


def test_the_first_large_batch_runs_while_the_second_process_starts(ledger: Ledger) -> None:
    """Starting takes about a second: the batch that starts it does not wait for it."""
    helper = ledger.app.second_process
    assert helper is not None
    assert all(r["ok"] for r in ledger.execute_many(_batch(40)))
    assert helper.shares_sent == 0 and helper._child is not None  # started, not used
    deadline = time.monotonic() + 30
    batches = itertools.count(1)
    while helper.shares_sent == 0:  # a later batch is split once it is ready
        assert time.monotonic() < deadline
        time.sleep(0.05)
        commands = _batch(30, start=40 * next(batches))
        assert all(r["ok"] for r in ledger.execute_many(commands))
    assert helper._child is not None and helper._child.poll() is None


def test_a_second_process_that_dies_between_batches_is_replaced(ledger: Ledger) -> None:
    helper = _warmed_up(ledger)
    assert all(r["ok"] for r in ledger.execute_many(_batch(40)))
    assert helper._child is not None
    helper._child.kill()
    helper._child.wait()
    assert all(r["ok"] for r in ledger.execute_many(_batch(40, start=40)))  # here, alone
    assert helper.shares_sent == 1
    assert helper._child is not None and helper._child.poll() is None  # a new one
    helper.warm_up()
    assert all(r["ok"] for r in ledger.execute_many(_batch(40, start=80)))
    assert helper.shares_sent == 2
    assert ledger.max_position() == 120 * 9


def test_a_second_process_that_dies_during_a_batch_costs_a_retry(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = _warmed_up(ledger)
    submit = helper.submit
    killed: list[int] = []

    def dying(*args: Any) -> None:
        submit(*args)
        if not killed:  # the first share is sent, and then the process dies
            assert helper._child is not None
            killed.append(helper._child.pid)
            helper._child.kill()

    monkeypatch.setattr(helper, "submit", dying)
    assert all(r["ok"] for r in ledger.execute_many(_batch(40)))
    assert killed and helper._child is not None and helper._child.pid != killed[0]
    assert helper.shares_sent == 2  # the retry's share went to the new process
    # each event once (on PostgreSQL the ids the rolled-back attempt drew are not reused)
    assert sum(1 for _ in ledger.notifications()) == 40 * 9


def test_a_second_process_that_cannot_open_the_ledger_leaves_batches_to_this_one(
    ledger: Ledger, tmp_path: Path
) -> None:
    helper = ledger.app.second_process
    assert helper is not None
    # where the other process would look for the ledger, nothing can be made
    (tmp_path / "blocked").write_text("a file, not a folder")
    elsewhere = Settings.from_env(
        {
            "LEDGER_HOME": str(tmp_path / "blocked" / "home"),
            "LEDGER_MASTER_KEY": ledger.app.second_process._settings.master_key or "",
        }
    )
    helper._settings = elsewhere
    with pytest.raises(Exception):  # noqa: B017 - whatever it met, as it met it
        helper.warm_up()
    assert helper._child is None
    helper._next_start = 0.0
    assert all(r["ok"] for r in ledger.execute_many(_batch(40)))  # starts one, runs here
    deadline = time.monotonic() + 30
    while helper._child is not None:  # that one fails too, and is let go
        assert helper.takes(_batch(40)) is False
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert helper._next_start > time.monotonic()  # not tried again for a while
    assert all(r["ok"] for r in ledger.execute_many(_batch(40, start=40)))
    assert helper._child is None and helper.shares_sent == 0
    assert ledger.max_position() == 80 * 9


def test_batches_from_several_threads_start_one_second_process(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HTTP server's pool sends batches from many threads at once."""
    helper = ledger.app.second_process
    assert helper is not None
    start = helper._start
    started: list[int] = []

    def counted() -> Any:
        started.append(1)
        return start()

    monkeypatch.setattr(helper, "_start", counted)
    deadline = time.monotonic() + 30
    rounds = itertools.count()
    while helper.shares_sent < 4:  # until several have been split
        assert time.monotonic() < deadline
        first = 8 * 30 * next(rounds)
        with ThreadPoolExecutor(4) as pool:
            done = list(
                pool.map(
                    lambda i, first=first: ledger.execute_many(_batch(30, start=first + 30 * i)),
                    range(8),
                )
            )
        assert all(r["ok"] for results in done for r in results)
    assert started == [1]
    assert sum(1 for _ in ledger.notifications()) == 8 * 30 * 9 * next(rounds)


def test_closing_the_ledger_ends_the_second_process(settings: Settings) -> None:
    with Ledger.open(settings, clock=FixedClock(NOW)) as ledger:
        helper = ledger.app.second_process
        assert helper is not None
        helper.warm_up()
        ledger.execute_many(_batch(40))
        assert helper._child is not None and helper.shares_sent == 1
        child = helper._child
    assert child.wait(timeout=10) == 0


def test_closing_the_ledger_stops_a_second_process_still_starting(settings: Settings) -> None:
    with Ledger.open(settings, clock=FixedClock(NOW)) as ledger:
        ledger.execute_many(_batch(40))
        helper = ledger.app.second_process
        assert helper is not None and helper._child is not None
        child = helper._child
        started = time.monotonic()
    assert child.poll() is not None  # stopped, not waited for while it opens the ledger
    assert time.monotonic() - started < 0.5


def test_small_batches_group_commits_and_idempotent_batches_run_in_one_process(
    settings: Settings,
) -> None:
    with Ledger.open(settings, clock=FixedClock(NOW)) as ledger:
        helper = ledger.app.second_process
        assert helper is not None
        ledger.execute_many(_batch(20))  # 140 commands
        keyed = [{**c, "idempotency_key": f"k-{i}"} for i, c in enumerate(_batch(40, 20))]
        ledger.execute_many(keyed)
        ledger.app.execute_many(_batch(40, 60), atomic=False)
        assert helper._child is None  # never started
        assert ledger.max_position() == 100 * 9 + len(keyed)  # and a receipt a keyed command


def _unparsable(subject: str) -> dict[str, Any]:
    """A command that does not parse: a field `collect` does not take."""
    return {**_rejects(subject), "category": "name", "colour": "blue"}


@pytest.mark.parametrize("unparsable_in", ["first share", "second share"])
def test_a_command_that_does_not_parse_is_named_before_any_the_rules_refuse(
    ledger: Ledger, unparsable_in: str
) -> None:
    """As when one process parses the whole batch before running it: the earliest command
    that does not parse is named, wherever it is, even after one the rules refuse."""
    commands = _batch(60)
    first, second = split_by_subject(list(enumerate(commands)))
    parse_share, rule_share = (first, second) if unparsable_in == "first share" else (second, first)
    # commands changed in place keep the shares as they are
    refused_at = next(i for i, c in rule_share if c["type"] == "collect")
    unparsable_at = [i for i, c in parse_share if c["type"] == "collect"][-1]
    assert refused_at < unparsable_at
    bad = list(commands)
    bad[refused_at] = _rejects(commands[refused_at]["subject"])
    bad[unparsable_at] = _unparsable(commands[unparsable_at]["subject"])
    assert split_by_subject(list(enumerate(bad)))[0] == [(i, bad[i]) for i, _ in first]

    def named(results: list[dict[str, Any]]) -> int:
        (at,) = [i for i, r in enumerate(results) if not r.get("rolled_back")]
        assert results[at]["error"]["code"] == "invalid_command"
        return at

    assert ledger.app.second_process is not None
    ledger.app.second_process.warm_up()
    assert named(ledger.execute_many(bad)) == unparsable_at
    assert ledger.app.second_process.shares_sent == 1
    # one that does not parse in each share: the earlier of them
    early_at = next(i for i, c in parse_share if c["type"] == "collect")
    later_at = [i for i, c in rule_share if c["type"] == "collect"][-1]
    for at in (early_at, later_at):
        bad[at] = _unparsable(commands[at]["subject"])
    assert named(ledger.execute_many(bad)) == min(early_at, later_at)
    assert ledger.max_position() == 0
    assert ledger.keystore.records() == []


def test_the_actor_given_for_a_split_batch_is_every_commands_actor(ledger: Ledger) -> None:
    commands = _batch(40)
    commands[8] = {**commands[8], "actor": "kundeservice"}  # its own actor stays
    assert ledger.app.second_process is not None
    ledger.app.second_process.warm_up()
    assert all(r["ok"] for r in ledger.execute_many(commands, actor="onboarding"))
    assert ledger.app.second_process.shares_sent == 1
    actors = {
        c["subject"]: {e["actor"] for e in ledger.history(c["subject"])} for c in commands[::7]
    }
    assert actors.pop(commands[8]["subject"]) == {"onboarding", "kundeservice"}
    assert set(map(frozenset, actors.values())) == {frozenset({"onboarding"})}


@given(
    subjects=st.lists(
        st.one_of(
            st.none(),
            st.sampled_from(["not a uuid", 7]),
            st.sampled_from([str(uuid.UUID(int=n)) for n in range(12)]),
        ),
        max_size=60,
    ),
    spellings=st.lists(st.sampled_from(["as is", "upper", "braces"]), min_size=60, max_size=60),
)
def test_a_split_keeps_each_subject_in_one_share_in_order(
    subjects: list[Any], spellings: list[str]
) -> None:
    """Every subject, however its UUID is spelled, in one share; commands that name no
    valid subject each on their own."""

    def spelled(subject: Any, how: str) -> Any:
        if not isinstance(subject, str) or how == "as is" or subject == "not a uuid":
            return subject
        return subject.upper() if how == "upper" else "{" + subject + "}"

    commands = [
        (
            i,
            {"type": "record_dialogue", "subject": spelled(s, spellings[i])}
            if s is not None
            else {
                "type": "register_subject",
                "kind": "customer",
                "purpose": "customer_administration",
                "legal_basis": "contract",
            },
        )
        for i, s in enumerate(subjects)
    ]
    first, second = split_by_subject(commands)
    assert sorted(i for i, _ in first + second) == list(range(len(commands)))
    for share in (first, second):
        assert [i for i, _ in share] == sorted(i for i, _ in share)
    valid = [s for s in subjects if isinstance(s, str) and s != "not a uuid"]
    in_first = {subjects[i] for i, _ in first if subjects[i] in valid}
    in_second = {subjects[i] for i, _ in second if subjects[i] in valid}
    assert not in_first & in_second
    groups = [len(list(g)) for _, g in itertools.groupby(sorted(valid))]
    assert abs(len(first) - len(second)) <= max([1, *groups])


def test_the_writers_transaction_outlives_a_share_that_is_slow_to_come(
    pg_schema: str, tmp_path: Path
) -> None:
    """The server ends a transaction idle for longer than its limit (5 s, the library's;
    1 s here), but not one in the middle of a COPY: the writer's waits for the other
    share are spent in one."""
    require_postgres()
    settings = Settings.from_env(
        {
            "LEDGER_HOME": str(tmp_path / "home"),
            "LEDGER_MASTER_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            "LEDGER_DATABASE_URL": f"{PG_URL}?schema={pg_schema}",
        }
    )
    with psycopg.connect(_conninfo(PG_URL), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"')
    env = {**application_env(settings), "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "1"}
    app = LedgerApplication(env)
    recorder: Any = app.recorder

    def events(count: int) -> list[EventRow]:
        return [
            (uuid.uuid4().bytes, 1, "ledger.domain.subject:DataSubject.Registered", b"{}")
            for _ in range(count)
        ]

    with recorder.writing_rows() as sink:
        sink.write(events(40))
        time.sleep(2)  # the other share, slow to come
        sink.write(events(40))
    assert recorder.max_notification_id() == 80
    assert [n.id for n in recorder.select_notifications(start=1, limit=100)] == list(range(1, 81))
    app.close()


def test_a_reply_to_an_abandoned_share_is_not_taken_for_the_next(ledger: Ledger) -> None:
    """A batch that stopped waiting (its own share failed first) leaves a reply behind:
    the next batch passes over it."""
    helper = _warmed_up(ledger)
    abandoned = list(enumerate(_batch(3, start=100)))
    wanted = list(enumerate(_batch(2, start=200)))
    helper.submit(abandoned, NOW, None)
    helper.submit(wanted, NOW, None)
    share = helper.result()
    assert [i for i, _ in share.results] == [i for i, _ in wanted]
    assert {str(uuid.UUID(bytes=e[0])) for e in share.events} == {c["subject"] for _, c in wanted}
    assert ledger.max_position() == 0  # a share is never written by its maker


def test_the_other_share_sends_its_finished_subjects_events_ahead(ledger: Ledger) -> None:
    """The writer inserts them while the rest of that share runs: each subject's events
    in one message, once it has had its last command; the share brings the others."""
    helper = _warmed_up(ledger)
    commands = _batch(40)  # 280 commands, 360 events
    helper.submit(list(enumerate(commands)), NOW, None)
    messages: list[list[EventRow]] = []
    while not isinstance(reply := helper.receive(), Share):
        messages.append(reply)
    messages.append(reply.events)
    assert len(messages) >= 3  # sent ahead after 100 and 200 commands, then the rest
    assert all(messages[:-1])
    subjects = {c["subject"] for c in commands}
    seen: dict[str, int] = {}
    for number, rows in enumerate(messages):
        for subject, _, _, _ in rows:
            key = str(uuid.UUID(bytes=subject))
            assert seen.setdefault(key, number) == number  # a subject's events together
    assert sorted((uuid.UUID(bytes=r[0]), r[1]) for rows in messages for r in rows) == sorted(
        (uuid.UUID(s), v) for s in subjects for v in range(1, 10)
    )  # every event once
    assert reply.registered_now == subjects
    assert ledger.max_position() == 0  # a share is never written by its maker


@pytest.mark.parametrize("late_in", ["first share", "second share"])
def test_a_rejection_after_events_went_ahead_writes_nothing(ledger: Ledger, late_in: str) -> None:
    """The events sent ahead (and, on PostgreSQL, this process's own, inserted while its
    share runs) are in the open transaction: a command refused near the end of either
    share rolls them back with the rest."""
    commands = _batch(100)  # 700 commands: each share passes 300 before its last
    first, second = split_by_subject(list(enumerate(commands)))
    share = first if late_in == "first share" else second
    last_subject = share[-1][1]["subject"]
    bad = _with_rejections(commands, {last_subject})
    refused = next(i for i, c in enumerate(bad) if c.get("category") == "health")
    helper = _warmed_up(ledger)
    results = ledger.execute_many(bad)
    assert helper.shares_sent == 1
    assert results[refused]["error"]["code"] == "explicit_consent_required"
    assert all(r.get("rolled_back") for i, r in enumerate(results) if i != refused)
    assert ledger.max_position() == 0
    assert ledger.keystore.records() == []
    assert ledger.find("email", "kunde0@example.dk") == []
    assert all(r["ok"] for r in ledger.execute_many(commands))
    assert sum(1 for _ in ledger.notifications()) == 100 * 9


def test_a_second_process_that_dies_after_sending_events_ahead_costs_a_retry(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = _warmed_up(ledger)
    killed: list[int] = []
    receive, rows_ready = helper.receive, helper.rows_ready

    def kill_once() -> None:
        """It dies before sending the rest (what it sent before dying is dropped)."""
        if not killed:
            assert helper._child is not None and helper._child.stdout is not None
            killed.append(helper._child.pid)
            helper._child.kill()
            helper._child.wait()
            helper._child.stdout.read()

    def receiving() -> Any:
        reply = receive()
        if isinstance(reply, list):
            kill_once()
        return reply

    def ready() -> list[list[EventRow]]:
        rows = rows_ready()
        if rows:
            kill_once()
        return rows

    monkeypatch.setattr(helper, "receive", receiving)
    monkeypatch.setattr(helper, "rows_ready", ready)
    assert all(r["ok"] for r in ledger.execute_many(_batch(60)))
    assert killed and helper._child is not None and helper._child.pid != killed[0]
    assert helper.shares_sent == 2
    assert sum(1 for _ in ledger.notifications()) == 60 * 9  # each event once


def test_what_went_ahead_is_reported_with_the_share(ledger: Ledger) -> None:
    """Which subjects are new, which keys their events shred and which snapshots are due
    are taken with their events, and reported in the share; events the other end does
    not take come in the share, and it is offered no more."""
    busy, erased = str(uuid.uuid4()), str(uuid.uuid4())
    commands = [
        *onboarding(0)[:1],
        *({**onboarding(1)[1], "value": f"Kunde {i}"} for i in range(60)),
    ]
    commands = [{**c, "subject": busy} for c in commands]  # 61 commands, 61 events
    commands += [{**c, "subject": erased} for c in onboarding(2)]
    commands.append({"type": "erase", "subject": erased})
    commands += _batch(30, start=10)
    offered: list[list[EventRow]] = []

    def ahead(rows: list[EventRow]) -> bool:
        offered.append(rows)
        return len(offered) == 1  # takes the first, not the second

    share = ledger.app.prepare_share(list(enumerate(commands)), NOW, None, ahead)
    assert share.rejected is None
    assert len(offered) == 2  # after 100 and 200 commands, and then no more
    taken = offered[0]
    assert {busy, erased} <= {str(uuid.UUID(bytes=r[0])) for r in taken}
    assert set(offered[1]) <= set(share.events)  # not taken: in the share
    events = [(r[0], r[1]) for rows in [taken, share.events] for r in rows]
    whole = ledger.app.prepare_share(list(enumerate(commands)), NOW, None)  # none ahead
    assert len(events) == len(set(events)) == len(whole.events)  # every event once
    assert set(events) == {(r[0], r[1]) for r in whole.events}
    assert sum(1 for subject, _ in events if subject == uuid.UUID(busy).bytes) == 63
    assert {str(uuid.UUID(bytes=s.originator_id.bytes)) for s in share.snapshots} == {busy}
    assert {subject for subject, _, _ in share.shreds} == {erased}
    assert {busy, erased} <= share.registered_now and len(share.registered_now) == 32
    assert ledger.max_position() == 0


def test_the_share_is_kept_for_receive_when_looking_for_events_sent_ahead(
    ledger: Ledger,
) -> None:
    helper = _warmed_up(ledger)
    wanted = list(enumerate(_batch(2)))  # too few commands to send any ahead
    helper.submit(wanted, NOW, None)
    deadline = time.monotonic() + 30
    while helper._held is None:
        assert time.monotonic() < deadline
        assert helper.rows_ready() == []
        time.sleep(0.01)
    share = helper.receive()
    assert isinstance(share, Share)
    assert [i for i, _ in share.results] == [i for i, _ in wanted]


def test_events_are_sent_ahead_only_while_they_fit_in_the_pipe() -> None:
    """The writer may read them only once its own share is made: a message that would
    fill the pipe is not sent (its events come with the share), nor is any after it."""
    replies = io.BytesIO()
    rows: list[EventRow] = [(uuid.uuid4().bytes, 1, "t", os.urandom(100)) for _ in range(10)]
    sender = _RowsSender(replies, 7, budget=2000)
    assert sender.send(rows)  # ~1.5 kB
    assert not sender.send(rows)  # would pass the budget
    assert not sender.send(rows[:1])  # and nothing after it
    replies.seek(0)
    assert _receive(replies) == (7, "rows", rows)
    assert replies.read() == b""


def test_the_reply_pipe_is_enlarged_for_events_sent_ahead(ledger: Ledger) -> None:
    helper = _warmed_up(ledger)
    assert helper._child is not None and helper._child.stdout is not None
    size = fcntl.fcntl(helper._child.stdout.fileno(), fcntl.F_GETPIPE_SZ)
    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    assert size == min(REPLY_PIPE_BYTES, limit)
