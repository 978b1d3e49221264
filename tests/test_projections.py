"""Read models: crash safety, erasure, as-of replay, the worker, the library's runner, the CLI.

Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from eventsourcing.utils import get_topic

from ledger.app import LedgerApplication
from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.domain.subject import DataSubject
from ledger.facade import Ledger
from ledger.persistence import application_env
from ledger.projections import ReadModels
from ledger.projections.readmodels import construct_recorder, projection_env
from ledger.projections.recorder import ROWS_PER_INSERT
from ledger.projections.replay import replay_as_of
from ledger.projections.views import canonical, dump_tables
from tests.conftest import require_postgres
from tests.projection_support import cli, fresh_env, fresh_ledger, tables
from tests.report_story import NOW, run_story, subject_id

CRASHING_RUNNER = textwrap.dedent(
    """
    import sys, time
    from ledger.config import Settings
    from ledger.facade import Ledger
    from ledger.projections.recorder import ReadModelRecorder

    marker = sys.argv[1]
    flushes = 0
    original = ReadModelRecorder._flush

    def flush(self, cursor, batch):
        # Write the third batch's rows, then stop dead before its position is tracked
        # and before the transaction commits: the parent kills us here.
        global flushes
        original(self, cursor, batch)
        flushes += 1
        if flushes == 3:
            with open(marker, "w") as out:
                out.write(str(self.position()))
            time.sleep(600)

    ReadModelRecorder._flush = flush
    with Ledger.open(Settings.from_env()) as ledger:
        models = ledger.read_models
        models.batch_size = models.rebuild_batch_size = 200
        if sys.argv[2:] == ["rebuild"]:
            models.rebuild()
        else:
            models.catch_up()
    """
)


def _topic_count(ledger: Ledger, name: str) -> int:
    return sum(1 for _ in ledger.notifications(topics=[get_topic(getattr(DataSubject, name))]))


def _replayed_until(ledger: Ledger, position: int) -> dict[str, Any]:
    """The tables a fresh store holds after applying the log up to `position`."""
    with tempfile.TemporaryDirectory() as folder:
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": f"{folder}/x.db"}
        models = ReadModels(ledger.app, construct_recorder(projection_env(env)), ledger.policy)
        try:
            models.recorder.reset("replay")
            models.catch_up(until=position)
            with models.reading(current=False) as cur:
                return dump_tables(cur)
        finally:
            models.close()


def test_runner_killed_mid_batch_resumes_exactly_once(backend: str) -> None:
    with fresh_env(backend) as env:
        with Ledger.open(Settings.from_env(env), clock=FixedClock(NOW)) as ledger:
            run_story(ledger, 120, views=False)
            head = ledger.max_position()
            assert head > 800
        committed = _run_until_killed(env, "catch_up")

        with Ledger.open(Settings.from_env(env), clock=FixedClock(NOW)) as ledger:
            # Two batches committed; the third, written but not committed, left nothing.
            assert 0 < ledger.read_models.position() == committed < head
            assert canonical(tables(ledger)) == canonical(_replayed_until(ledger, committed))

        # A restarted runner finishes the job.
        done = cli(env, "projections", "run", "--once")
        assert done.returncode == 0, done.stderr

        with Ledger.open(Settings.from_env(env), clock=FixedClock(NOW)) as ledger:
            models = ledger.read_models
            assert models.position() == head
            resumed = tables(ledger)
            # No event applied twice: every logged event once, every counter exact.
            counted = sum(r["n"] for r in resumed["rm_counters"] if r["metric"] == "collected")
            assert counted == _topic_count(ledger, "DataCollected")
            processed = len(resumed["rm_processing"])
            assert processed == _topic_count(ledger, "DataProcessed")
            models.rebuild()
            assert canonical(resumed) == canonical(tables(ledger))


_REFUSE_COUNTERS = {
    "sqlite": [
        "CREATE TRIGGER refuse_insert BEFORE INSERT ON rm_counters "
        "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END",
        "CREATE TRIGGER refuse_update BEFORE UPDATE ON rm_counters "
        "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END",
    ],
    "postgres": [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused by a test trigger'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON rm_counters "
        "FOR EACH ROW EXECUTE FUNCTION refuse()",
    ],
}
_ALLOW_COUNTERS = {
    "sqlite": ["DROP TRIGGER refuse_insert", "DROP TRIGGER refuse_update"],
    "postgres": ["DROP TRIGGER refuse ON rm_counters"],
}


def _more_of_the_same(ledger: Ledger) -> None:
    """New customers, and new data about stored ones (their rows change: upserts)."""
    stored = [s for s in ledger.subject_ids() if ledger.subject(s)["status"] == "active"]
    for n, subject in enumerate([*stored[:10], *(str(uuid.uuid4()) for _ in range(10))]):
        if subject not in stored:
            registered = ledger.execute(
                {
                    "type": "register_subject",
                    "subject": subject,
                    "kind": "customer",
                    "purpose": "customer_administration",
                    "legal_basis": "contract",
                }
            )
            assert registered["ok"], registered
        collected = ledger.execute(
            {
                "type": "collect",
                "subject": subject,
                "category": "correspondence",
                "value": f"Henvendelse {n}",
                "purpose": "customer_administration",
                "legal_basis": "contract",
                "source": "subject",
            }
        )
        assert collected["ok"], collected


def _run_sql(ledger: Ledger, statements: list[str]) -> None:
    with ledger.read_models.recorder.writer() as cur:
        for statement in statements:
            cur.execute(statement)


def test_a_batch_the_database_refuses_writes_nothing(backend: str) -> None:
    """The counters are the last write of a batch (on PostgreSQL, at the end of the
    pipeline that follows the COPYs): when the database refuses them, the batch's new
    rows, upserts and position are all rolled back, and the next catch-up applies it."""
    with fresh_ledger(backend, FixedClock(NOW)) as ledger:
        run_story(ledger, 30, views=False)
        models = ledger.read_models
        models.catch_up()
        before, position = tables(ledger), models.position()
        _more_of_the_same(ledger)
        _run_sql(ledger, _REFUSE_COUNTERS[backend])
        with pytest.raises(Exception, match="refused by a test trigger"):
            models.catch_up()
        assert models.position() == position
        assert canonical(tables(ledger)) == canonical(before)

        _run_sql(ledger, _ALLOW_COUNTERS[backend])
        assert models.catch_up() > 0
        assert models.position() == ledger.max_position()
        caught_up = tables(ledger)
        models.rebuild()
        assert canonical(caught_up) == canonical(tables(ledger))


def test_pages_read_ahead_give_what_plain_reads_give(backend: str) -> None:
    """The page reader asks for the page it is told comes next before returning the
    current one (PostgreSQL): right guesses, wrong guesses, a guess never used, and a
    connection that goes back to the pool ready for ordinary queries."""
    with fresh_ledger(backend, FixedClock(NOW)) as ledger:
        run_story(ledger, 10, views=False)
        events = ledger.read_models.events
        head = ledger.max_position()
        plain = [events.notifications(start, start + 6) for start in range(1, head + 1, 7)]
        with events.pages() as pages:
            read = [
                pages.page(start, start + 6, (start + 7, start + 13))
                for start in range(1, head + 1, 7)
            ]
            assert read == plain
            assert pages.page(3, 5, (40, 45)) == events.notifications(3, 5)
            assert pages.page(1, 2, None) == events.notifications(1, 2)  # a wrong guess
            assert pages.page(head + 1, head + 10, (head + 11, head + 20)) == []
        for _ in range(6):  # every pooled connection answers ordinary queries again
            assert events.notifications(1, 3) == plain[0][:3]
        with pytest.raises(ZeroDivisionError), events.pages() as pages:
            pages.page(1, 5, (6, 10))
            raise ZeroDivisionError
        assert events.notifications(1, 3) == plain[0][:3]


def _sealed_values(ledger: Ledger) -> list[tuple[str, dict[str, str]]]:
    """(subject, sealed value) of every value recorded in any event."""
    found = []
    for n in ledger.notifications():
        state = orjson.loads(n.state)
        for key in ("value", "recipient_name"):
            value = state.get(key)
            if isinstance(value, dict) and "ct" in value:
                found.append((str(n.originator_id), value))
    return found


def test_erasure_leaves_no_sealed_value_in_the_read_models(backend: str) -> None:
    with fresh_ledger(backend, FixedClock(NOW)) as ledger:
        run_story(ledger, 120)
        sweep = ledger.sweep(NOW)
        assert sweep["shredded"], "the story has scopes past their deadline"
        shredded = {
            (str(n.originator_id), kid)
            for n in ledger.notifications(topics=[get_topic(DataSubject.ScopeShredded)])
            for kid in orjson.loads(n.state)["kids"]
        }
        assert len(shredded) >= 40
        ledger.read_models.catch_up()
        dump = canonical(tables(ledger)).decode()
        gone = [v for s, v in _sealed_values(ledger) if (s, v["kid"]) in shredded]
        kept = [v for s, v in _sealed_values(ledger) if (s, v["kid"]) not in shredded]
        assert gone and kept
        for value in gone:
            assert value["ct"] not in dump
            assert value["commit"] not in dump
        # values of live scopes are kept as stored (the latest of each category)
        assert any(v["ct"] in dump for v in kept)
        erased = ledger.read_models.query(
            "SELECT COUNT(*) AS n FROM rm_data_items WHERE erased AND value IS NOT NULL"
        )
        assert erased[0]["n"] == 0
        view = ledger.subject(subject_id(0), reveal=True, purpose="check", actor="tests")
        assert view["status"] == "partially_erased"
        assert all(d["value"] is None for d in view["data"] if d["erased"])


def test_as_of_recorded(backend: str) -> None:
    clock = FixedClock(datetime(2026, 3, 2, 10, tzinfo=UTC))
    with fresh_ledger(backend, clock) as ledger:
        s = "0b7c1e9a-0000-4000-8000-0000000000aa"
        base = {"subject": s}
        ledger.execute(
            {
                "type": "register_subject",
                **base,
                "kind": "prospect",
                "purpose": "customer_administration",
                "legal_basis": "contract",
                "identifiers": {"email": "asof@example.dk"},
            }
        )
        ledger.execute(
            {
                "type": "give_consent",
                **base,
                "purpose": "marketing",
                "notice_version": "2018-05-25",
                "method": "web_form",
                "channels": ["email"],
            }
        )
        time.sleep(0.02)
        moment = datetime.now(UTC)
        time.sleep(0.02)
        ledger.execute({"type": "withdraw_consent", **base, "purpose": "marketing"})
        ledger.execute({"type": "erase", **base})
        now_view = ledger.subject(s)
        assert now_view["status"] == "erased"

        with replay_as_of(ledger.app, ledger.policy, moment) as then:
            view = then.subject(s, current=False)
            assert view["status"] == "active"
            assert [(c["purpose"], c["active"]) for c in view["consents"]] == [("marketing", True)]
            assert [d["erased"] for d in view["data"]] == [False]
            assert view["data"][0]["value"] is None
            # the replay keeps no ciphertext at all
            assert all("ct" not in (r["value"] or {}) for r in tables_of(then)["rm_data_items"])
        with replay_as_of(ledger.app, ledger.policy, moment - timedelta(days=1)) as before:
            assert before.query("SELECT COUNT(*) AS n FROM rm_subjects", current=False) == [
                {"n": 0}
            ]


def tables_of(models: ReadModels) -> dict[str, Any]:
    with models.reading(current=False) as cur:
        return dump_tables(cur)


def test_worker_keeps_read_models_current(backend: str) -> None:
    with fresh_ledger(backend, FixedClock(NOW)) as ledger:
        app = LedgerApplication(application_env(ledger.settings))
        worker = ReadModels.open(app, ledger.policy)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"poll": 0.05})
        thread.start()
        try:
            run_story(ledger, 12, views=False)
            head = ledger.max_position()
            deadline = time.monotonic() + 30
            while worker.position() < head:
                assert time.monotonic() < deadline, (worker.position(), head)
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(30)
            worker.close()
            app.close()
        assert not thread.is_alive()
        assert ledger.read_models.position() == head
        incremental = tables(ledger)
        ledger.read_models.rebuild()
        assert canonical(incremental) == canonical(tables(ledger))


def test_library_projection_runner(pg_schema: str) -> None:
    """The same projection under eventsourcing's own ProjectionRunner (event by event)."""
    from eventsourcing.projection import ProjectionRunner

    from ledger.projections import PostgresReadModelRecorder
    from ledger.projections.projection import ReadModelProjection
    from tests.conftest import MASTER_KEY, PG_URL

    with tempfile.TemporaryDirectory() as home:
        env = {
            "LEDGER_HOME": home,
            "LEDGER_MASTER_KEY": MASTER_KEY,
            "LEDGER_DATABASE_URL": f"{PG_URL}?schema={pg_schema}",
        }
        settings = Settings.from_env(env)
        with Ledger.open(settings, clock=FixedClock(NOW)) as ledger:
            run_story(ledger, 8, views=False)
            head = ledger.max_position()
            with ProjectionRunner(
                application_class=LedgerApplication,
                projection_class=ReadModelProjection,
                view_class=PostgresReadModelRecorder,
                env=application_env(settings),
            ) as runner:
                runner.wait(head, timeout=60)
            by_library = tables(ledger)
            ledger.read_models.rebuild()
            assert canonical(by_library) == canonical(tables(ledger))


def test_cli_projections(cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k.startswith("LEDGER_")}
    story = "\n".join(
        json.dumps(c)
        for c in [
            {
                "type": "register_subject",
                "subject": subject_id(1),
                "kind": "prospect",
                "purpose": "customer_administration",
                "legal_basis": "contract",
                "identifiers": {"email": "cli@example.dk"},
            },
            {"type": "record_dialogue", "subject": subject_id(1)},
        ]
    )
    done = cli(env, "exec", "-", stdin=story + "\n")
    assert done.returncode == 0, done.stderr
    status = cli(env, "projections", "status", "--json")
    assert status.returncode == 0, status.stderr
    (current,) = json.loads(status.stdout)["projections"]
    assert current["lag"] == 0 and current["position"] == current["head"] > 0
    assert current["subjects"] == 1
    rebuilt = cli(env, "projections", "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["events"] == current["head"]
    shown = cli(env, "subject", "show", subject_id(1), "--json")
    assert json.loads(shown.stdout)["kind"] == "prospect"
    replay = cli(env, "audit", "replay", "--as-of", "2000-01-01")
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["subjects"] == 0
    replay = cli(env, "audit", "replay", "--as-of", "2999-01-01", "--subject", subject_id(1))
    assert json.loads(replay.stdout)["subject"] == subject_id(1)
    # not recorded yet at that moment: the answer says where a late report would be
    early = cli(env, "audit", "replay", "--as-of", "2000-01-01", "--subject", subject_id(1))
    assert early.returncode == 1
    refused = json.loads(early.stdout)["error"]
    assert refused["code"] == "unknown_subject" and "--by occurred" in refused["message"]


def test_schema_change_rebuilds(backend: str) -> None:
    with fresh_ledger(backend, FixedClock(NOW)) as ledger:
        run_story(ledger, 5, views=False)
        ledger.read_models.catch_up()
        before = tables(ledger)
        ledger.read_models.recorder.reset("from older code")  # as if built by other code
        reopened = ReadModels.open(ledger.app, ledger.policy)
        try:
            assert reopened.position() == 0  # reset on open: the fingerprint differed
            reopened.catch_up()
            with reopened.reading(current=False) as cur:
                assert canonical(dump_tables(cur)) == canonical(before)
        finally:
            reopened.close()


def _index_names(models: ReadModels) -> set[str]:
    if models.backend == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE ?"
    else:
        sql = "SELECT indexname AS name FROM pg_indexes WHERE schemaname = current_schema()"
        sql += " AND indexname LIKE ?"
    rows = models.query(sql, ("rm_%",), current=False)
    return {str(r["name"]) for r in rows if not str(r["name"]).endswith("_pkey")}


@pytest.fixture
def kept(backend: str) -> Iterator[tuple[Ledger, dict[str, Any], set[str]]]:
    """A story of 40 customers with its read models kept incrementally: the ledger (set to
    rebuild in batches of 50 events, so most subjects' events span several), the tables
    and the index names, as a rebuild must leave them."""
    with fresh_ledger(backend, FixedClock(NOW)) as ledger:
        run_story(ledger, 40, views=False)
        models = ledger.read_models
        models.catch_up()
        expected = tables(ledger)
        indexes = _index_names(models)
        models.rebuild_batch_size = 50
        yield ledger, expected, indexes


def test_a_stopped_rebuild_still_creates_its_indexes(
    kept: tuple[Ledger, dict[str, Any], set[str]],
) -> None:
    """A rebuild creates the secondary indexes last, also when it is stopped half-way."""
    ledger, expected, indexes = kept
    models = ledger.read_models
    assert len(indexes) >= 4, indexes

    def stop(position: int, target: int) -> None:
        raise KeyboardInterrupt  # an operator's Ctrl-C after the first batch

    with pytest.raises(KeyboardInterrupt):
        models.rebuild(progress=stop)
    assert 0 < models.position() < ledger.max_position()
    assert _index_names(models) == indexes
    assert "indexes_pending" not in models.recorder.stored_meta()
    models.catch_up()
    assert canonical(tables(ledger)) == canonical(expected)


def test_a_rebuild_finds_earlier_subjects_by_their_registration(
    kept: tuple[Ledger, dict[str, Any], set[str]],
) -> None:
    """Until its indexes come, at the end, a rebuild finds the subjects that earlier
    batches stored by the position of their registration in the log, and the tables end
    as when kept incrementally."""
    ledger, expected, indexes = kept
    models = ledger.read_models
    seen: list[set[str]] = []
    models.rebuild(progress=lambda position, target: seen.append(_index_names(models)))
    assert len(seen) > 5 and all(not found for found in seen)  # no index meanwhile
    assert _index_names(models) == indexes
    assert canonical(tables(ledger)) == canonical(expected)


def test_a_rebuild_in_one_batch_equals_the_incremental_tables(
    kept: tuple[Ledger, dict[str, Any], set[str]],
) -> None:
    """One batch for the whole story: on SQLite its new rows go ROWS_PER_INSERT to a
    statement, and the remainder one by one; both must store what catching up stored."""
    ledger, expected, _ = kept
    models = ledger.read_models
    models.rebuild_batch_size = ledger.max_position()
    subjects = len(expected["rm_subjects"])
    assert subjects > ROWS_PER_INSERT and subjects % ROWS_PER_INSERT != 0
    models.rebuild()
    assert canonical(tables(ledger)) == canonical(expected)


def test_a_killed_rebuild_gets_its_indexes_once_it_is_clearly_dead(backend: str) -> None:
    """A rebuild killed outright leaves its mark in rm_meta. Another process leaves the
    indexes to a rebuild whose mark is fresh (it may be running), and creates them once
    the mark is older than `abandoned_after`; the tables end as a full rebuild makes them."""
    with fresh_env(backend) as env:
        with Ledger.open(Settings.from_env(env), clock=FixedClock(NOW)) as ledger:
            run_story(ledger, 40, views=False)
            ledger.read_models.catch_up()
            expected = tables(ledger)
            indexes = _index_names(ledger.read_models)
        killed = _run_until_killed(env, "rebuild")

        with Ledger.open(Settings.from_env(env), clock=FixedClock(NOW)) as ledger:
            models = ledger.read_models
            assert models.position() == killed  # two batches of the rebuild committed
            assert _index_names(models) < indexes  # none yet, the subject lookup neither
            assert "indexes_pending" in models.recorder.stored_meta()  # a fresh mark
            models.abandoned_after = 0.0  # as if a minute had passed without a batch
            models.catch_up()
            assert _index_names(models) == indexes
            assert "indexes_pending" not in models.recorder.stored_meta()
            assert canonical(tables(ledger)) == canonical(expected)


def _run_until_killed(env: dict[str, str], action: str) -> int:
    """Run CRASHING_RUNNER (`catch_up` or `rebuild`), SIGKILL it in its third batch;
    returns the position it had committed."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    full.update(env)
    marker = Path(env["LEDGER_HOME"]) / f"killed-{action}"
    runner = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUNNER, str(marker), action],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() or not marker.read_text():
        assert runner.poll() is None, runner.stderr.read() if runner.stderr else ""
        assert time.monotonic() < deadline, "the runner never reached its third batch"
        time.sleep(0.05)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait(30)
    return int(marker.read_text())


def test_a_gap_in_the_notification_ids_is_crossed_in_one_step() -> None:
    """Ids of rolled-back saves are never used (PostgreSQL sequences do not go back): a
    catch-up reads pages by id range and steps over a run of unused ids at once."""
    require_postgres()
    with fresh_ledger("postgres", FixedClock(NOW)) as ledger:
        run_story(ledger, 10, views=False)
        before = ledger.max_position()
        recorder: Any = ledger.app.recorder
        qualified = f'"{recorder.datastore.schema}"."{recorder.events_table_name}"'
        with recorder.datastore.get_connection() as conn:  # as if 50,000 ids were burnt
            conn.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'notification_id'), %s)",
                (qualified, before + 50_000),
            )
        later = [
            {
                "type": "register_subject",
                "subject": str(uuid.uuid4()),
                "kind": "customer",
                "purpose": "customer_administration",
                "legal_basis": "contract",
            }
            for _ in range(20)
        ]
        assert all(r["ok"] for r in ledger.execute_many(later))
        assert ledger.max_position() > before + 50_000
        models = ledger.read_models
        models.batch_size = 100
        writes = 0
        apply = models.recorder.apply

        def counting(*args: Any, **kwargs: Any) -> bool:
            nonlocal writes
            writes += 1
            return apply(*args, **kwargs)

        models.recorder.apply = counting  # type: ignore[method-assign]
        models.catch_up()
        events = sum(1 for _ in ledger.notifications())
        assert writes <= events // 100 + 4  # not one per 100 burnt ids
        incremental = tables(ledger)
        models.rebuild()
        assert canonical(incremental) == canonical(tables(ledger))
