"""Reports of the seeded story (`tests/report_story.py`, 300 people, every command type),
checked against figures counted by hand from the story's schedule, on SQLite and PostgreSQL.

How each figure is counted is written beside it; "i%k==r" means the people whose number
i (0..299) leaves remainder r when divided by k.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from ledger.clock import FixedClock, parse_instant
from ledger.config import Settings
from ledger.facade import Ledger
from ledger.projections.replay import replay_as_of
from ledger.reports import (
    Report,
    ReportContext,
    Section,
    available,
    produce,
    register_report,
    unregister_report,
)
from tests.conftest import require_postgres
from tests.projection_support import cli, fresh_env
from tests.report_story import NOW, run_story, subject_id


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def story(request: pytest.FixtureRequest) -> Iterator[tuple[Ledger, dict[str, str]]]:
    """The story, told once per backend for every test in this module."""
    if request.param == "postgres":
        require_postgres()
    with (
        fresh_env(request.param) as env,
        Ledger.open(Settings.from_env(env), clock=FixedClock(NOW)) as ledger,
    ):
        run_story(ledger)
        yield ledger, env


def report(story: tuple[Ledger, dict[str, str]], name: str) -> dict[str, Any]:
    result: dict[str, Any] = produce(story[0].read_models, name, now=NOW)
    return result


def test_ropa(story: tuple[Ledger, dict[str, str]]) -> None:
    r = report(story, "ropa")
    assert r["controller"]["name"] == "CEKURA A/S"
    observed = {
        (o["purpose"], o["category"]): (o["collections"], o["on_file"]) for o in r["observed"]
    }
    assert observed == {
        # everyone registers with e-mail and phone and gives name and address; the six
        # erased people (i%50==7) have them no longer
        ("customer_administration", "email"): (300, 294),
        ("customer_administration", "phone"): (300, 294),
        ("customer_administration", "name"): (300, 294),
        ("customer_administration", "address"): (300, 294),
        # i%2==0 (150): a marketing profile, i%4==2 in February, i%4==0 in March
        ("marketing", "marketing_profile"): (150, 150),
        # customers (i%3!=2, 200) have an invoice; erasure keeps it (bookkeeping law)
        ("bookkeeping", "invoice"): (200, 200),
        # i%15==8: 8, 23, ..., 293 (20)
        ("competition", "competition_entry"): (20, 20),
        # i%12==4: 4, 16, ..., 292 (25)
        ("call_documentation", "call_recording"): (25, 25),
    }
    categories = {c["category"]: c for c in r["categories"]}
    assert categories["address"]["rectifications"] == 28  # i%11==0: 0, 11, ..., 297
    assert categories["email"]["erased"] == 6
    assert categories["health"]["collections"] == 0 and categories["health"]["sensitive"]
    purposes = {p["purpose"]: p for p in r["purposes"]}
    assert purposes["marketing"]["processing_acts"] == 150  # newsletters to i%2==0
    assert purposes["analytics"]["processing_acts"] == 60  # segmentation of i%5==0
    assert purposes["customer_administration"]["subjects_with_data"] == 294
    assert purposes["bookkeeping"]["subjects_with_data"] == 200
    assert r["undeclared_purposes"] == []
    kinds = {k["kind"]: k for k in r["data_subjects"]}
    # customers i%3!=2 (200), four erased (7, 57, 157, 207); prospects 100, two erased
    assert (kinds["customer"]["registered"], kinds["customer"]["erased"]) == (200, 4)
    assert (kinds["prospect"]["registered"], kinds["prospect"]["erased"]) == (100, 2)
    recipients = {x["kind"]: (x["agreements"], x["disclosures"]) for x in r["recipients"]}
    # family members for i%30==5 (10), general practitioners for i%30==7 (10)
    assert recipients["family_member"] == (10, 10)
    assert recipients["general_practitioner"] == (10, 10)
    assert recipients["public_authority"] == (0, 0)
    # transfers to DE for i%40==9 (8); nothing outside the EU
    assert r["transfers"]["by_country"] == [{"country": "DE", "transfers": 8}]
    assert r["transfers"]["outside_eu"] == 0
    retention = {x["class"]: x for x in r["retention"]}
    assert retention["customer_data"]["shredded_scopes"] == 6
    assert retention["bookkeeping"]["legal_obligation"] is True
    assert r["security_measures"]


def test_consent(story: tuple[Ledger, dict[str, str]]) -> None:
    purposes = {p["purpose"]: p for p in report(story, "consent")["purposes"]}
    marketing = purposes["marketing"]
    # given: e-mail+SMS by i%2==0 (150) and telephone by i%4==0 (75)
    assert marketing["given"] == 225
    # withdrawn: SMS by i%10==0 (30), everything by i%20==0 (15)
    assert (marketing["withdrawals"], marketing["full_withdrawals"]) == (45, 15)
    assert marketing["active"] == 135  # 150 - 15
    channels = {
        c["channel"]: (c["given"], c["withdrawn"], c["active"]) for c in marketing["channels"]
    }
    assert channels == {
        "email": (150, 15, 135),  # lost only in the full withdrawals
        "sms": (150, 30, 120),  # the full withdrawals (i%20==0) had lost SMS already
        "phone": (75, 15, 60),  # i%20==0 all had telephone (i%4==0)
    }
    assert marketing["channel_consent_required"] == ["email", "phone", "sms"]
    competition = purposes["competition"]
    assert (competition["given"], competition["active"], competition["channels"]) == (20, 20, [])


def test_disclosures(story: tuple[Ledger, dict[str, str]]) -> None:
    r = report(story, "disclosures")
    assert len(r["disclosures"]) == 20
    assert r["uncovered"] == 0
    assert all(d["covered"] and d["agreement"] for d in r["disclosures"])
    family = [d for d in r["disclosures"] if d["recipient_kind"] == "family_member"]
    assert {d["subject"] for d in family} == {subject_id(i) for i in range(5, 300, 30)}
    assert all(d["agreement"]["categories"] == ["address", "name"] for d in family)
    assert all(d["agreement"]["valid_until"] == "2026-12-31" for d in family)
    # i%60==5 revoked theirs after the disclosure; the attempt afterwards was refused
    revoked = {d["subject"] for d in r["disclosures"] if d["agreement"]["revoked_at"]}
    assert revoked == {subject_id(i) for i in (5, 65, 125, 185, 245)}
    assert r["agreements"] == {"total": 20, "in_force": 15, "revoked": 5, "expired": 0}
    assert len(r["transfers"]) == 8 and all(t["inside_eu"] for t in r["transfers"])
    assert r["transfers_outside_eu"] == 0


def test_retention(story: tuple[Ledger, dict[str, str]]) -> None:
    r = report(story, "retention")
    assert r["today"] == "2026-03-02"
    by_class: dict[str, int] = {}
    for item in r["overdue"]:
        by_class[item["class"]] = by_class.get(item["class"], 0) + 1
    assert by_class == {
        # customers whose relationship ended 2025-06-01 (i%6==0, 50): due 2025-08-01;
        # prospects without a dialogue (66, anchored on registration in January 2025)
        # less the two erased (107, 257) and the three held (50, 140, 230)
        "customer_data": 50 + 61,
        # marketing profiles of February (i%4==2, 75) less the held 50 and 230
        "marketing": 73,
        # the competition ended 2025-02-28: due 2026-02-28
        "competition": 20,
    }
    held = {(h["subject"], h["scope"]) for h in r["held"]}
    assert held == {
        (subject_id(50), "customer_data"),
        (subject_id(140), "customer_data"),
        (subject_id(230), "customer_data"),
        (subject_id(50), "marketing"),
        (subject_id(230), "marketing"),
    }
    soon = {(d["scope"], d["deadline"]) for d in r["due_soon"]}
    assert soon == {("customer_data", "2026-03-20"), ("marketing", "2026-03-20")}
    # prospects with a dialogue on 2026-01-20 (i%9==2, 34); March profiles (i%4==0, 75)
    assert len(r["due_soon"]) == 34 + 75
    assert [d["held"] for d in r["due_soon"] if d["subject"] == subject_id(140)] == [True]
    first = next(o for o in r["overdue"] if o["subject"] == subject_id(0))
    assert (first["scope"], first["deadline"], first["days_overdue"]) == (
        "customer_data",
        "2025-08-01",
        213,
    )
    classes = {c["class"]: c for c in r["classes"]}
    # customer_data: 294 live; with a deadline 50 ended customers + 98 live prospects
    assert classes["customer_data"]["live_with_deadline"] == 148
    assert classes["customer_data"]["live_without_deadline"] == 146
    assert classes["customer_data"]["shredded"] == 6
    assert classes["call_recording"]["live_without_deadline"] == 25
    assert classes["bookkeeping"]["live_with_deadline"] == 200


def test_requests(story: tuple[Ledger, dict[str, str]]) -> None:
    r = report(story, "requests")
    # access by i%10==1 (30): in time i%20==1 (15), late i%40==11 (8), open i%40==31 (7,
    # all past due 2025-04-22, one extended to 2025-06-17); erasure by i%50==7 (6, in
    # time); portability by 99, 199, 299 received 2026-02-20, due 2026-03-20
    assert r["total"] == 39
    assert r["counts"] == {"open": 3, "overdue": 7, "answered_in_time": 21, "answered_late": 8}
    rights = {x["right"]: x for x in r["by_right"]}
    assert rights["access"] == {
        "right": "access",
        "open": 0,
        "overdue": 7,
        "answered_in_time": 15,
        "answered_late": 8,
    }
    assert rights["erasure"]["answered_in_time"] == 6
    assert rights["portability"]["open"] == 3
    extended = [x for x in r["requests"] if x["extended"]]
    assert [(x["subject"], x["due"], x["state"]) for x in extended] == [
        (subject_id(31), "2025-06-17", "overdue")
    ]


def test_subject_show_of_the_story(story: tuple[Ledger, dict[str, str]]) -> None:
    ledger = story[0]
    view = ledger.subject(subject_id(7))
    assert view["status"] == "erased"
    assert [(d["category"], d["erased"]) for d in view["data"]] == [
        ("email", True),
        ("phone", True),
        ("name", True),
        ("address", True),
        ("invoice", False),
    ]
    assert [r["scope"] for r in view["retention"]] == ["customer_data", "bookkeeping:2025"]
    assert view["agreements"][0]["recipient"] == {
        "kind": "general_practitioner",
        "name": None,
        "country": "SE",
    }
    stored = ledger.read_models.query(
        "SELECT a.recipient_name FROM rm_agreements a JOIN rm_subjects s ON s.sid = a.sid "
        "WHERE s.subject = ?",
        (subject_id(7),),
    )
    assert stored == [{"recipient_name": None}]  # the sealed name went with its scope
    twenty = ledger.subject(subject_id(20))
    assert [(c["purpose"], c["active"], c["channels"]) for c in twenty["consents"]] == [
        ("marketing", False, [])
    ]


def test_a_report_for_another_moment_says_its_records_are_todays(
    story: tuple[Ledger, dict[str, str]],
) -> None:
    """`--now` moves the clock that dates and deadlines are counted with, not the records:
    a report for another moment says so (it once said "As of" that moment over today's
    figures) and points to the replay that gives the records as they stood."""
    models = story[0].read_models
    elsewhen = produce(models, "consent", now=parse_instant("2020-01-07T00:00:00+01:00"), fmt="md")
    assert "The records as they stand now" in elsewhen and "As of" not in elsewhen
    assert "counted as on 7 January 2020" in elsewhen and "audit replay --as-of" in elsewhen
    current = produce(models, "consent", now=datetime.now(UTC), fmt="md")
    assert "As of" in current and "The records as they stand now" not in current


@pytest.mark.parametrize("fmt", ["md", "html"])
@pytest.mark.parametrize("name", ["ropa", "consent", "disclosures", "retention", "requests"])
def test_human_formats(story: tuple[Ledger, dict[str, str]], name: str, fmt: str) -> None:
    text = produce(story[0].read_models, name, now=NOW, fmt=fmt)
    assert isinstance(text, str)
    assert "CEKURA A/S" in text and "34046352" in text  # the controller, by name and CVR
    assert "2 March 2026" in text  # dated, in words
    if fmt == "md":
        assert text.startswith("# ")
        assert "\n## 1. " in text
    else:
        assert text.startswith("<!DOCTYPE html>")
        assert "<h1>" in text and "</html>" in text
        assert "<script" not in text
    # no personal value of the story appears, only pseudonymous ids
    for leak in ("Person 1", "e12@example.dk", "+45 5", "Pårørende", "Læge", "Gade 4"):
        assert leak not in text, leak


def test_cli(story: tuple[Ledger, dict[str, str]]) -> None:
    env = story[1]
    done = cli(env, "report", "requests", "--now", "2026-03-02")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["overdue"] == 7
    done = cli(env, "report", "ropa", "--now", "2026-03-02", "--format", "md")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# Record of processing activities — CEKURA A/S")
    done = cli(env, "report", "compliance")
    if "compliance" not in available():  # left to the audit module
        assert done.returncode == 1
        assert json.loads(done.stdout)["error"]["code"] == "invalid_command"
    done = cli(env, "report", "ropa", "--format", "pdf")
    assert done.returncode == 1


def test_registry_is_pluggable(story: tuple[Ledger, dict[str, str]]) -> None:
    @register_report("test_count", title="Subjects", description="a test report")
    def count(ctx: ReportContext) -> Report:
        n = ctx.query("SELECT COUNT(*) AS n FROM rm_subjects")[0]["n"]
        return Report("test_count", "Subjects", f"{n} subjects", {"subjects": int(n)}, [
            Section("Count", paragraphs=[f"{n} subjects"])
        ])  # fmt: skip

    try:
        assert produce(story[0].read_models, "test_count", now=NOW)["subjects"] == 300
        assert "test_count" in available()
    finally:
        unregister_report("test_count")
    assert "test_count" not in available()


MID_MAY = "2025-05-15T23:59:59+02:00"  # the end of 15 May in Copenhagen


def test_as_of_replay(story: tuple[Ledger, dict[str, str]]) -> None:
    """Reports and subject show as things stood on 15 May 2025 (events that had occurred)."""
    ledger, env = story
    moment = parse_instant(MID_MAY)
    with replay_as_of(ledger.app, ledger.policy, moment, basis="occurred") as then:

        def as_of(name: str) -> dict[str, Any]:
            out: dict[str, Any] = produce(
                then, name, now=moment, as_of=moment, basis="occurred", current=False
            )
            return out

        requests = as_of("requests")
        # only the 30 access requests existed; 15 answered 2025-04-10, 8 late on
        # 2025-05-05, person 31's extended to 2025-06-17, the other 6 open past due
        assert requests["total"] == 30
        assert requests["counts"] == {
            "open": 1,
            "overdue": 6,
            "answered_in_time": 15,
            "answered_late": 8,
        }
        marketing = next(p for p in as_of("consent")["purposes"] if p["purpose"] == "marketing")
        # the SMS withdrawals of 2025-05-01 had happened, the full ones of June not yet
        assert (marketing["withdrawals"], marketing["full_withdrawals"]) == (30, 0)
        assert marketing["active"] == 150
        assert {c["channel"]: c["active"] for c in marketing["channels"]} == {
            "email": 150,
            "sms": 120,
            "phone": 75,
        }
        retention = as_of("retention")
        # no dialogue yet (2026), no relationship ended (June), no hold (October): every
        # prospect's data was due two months after registration in January 2025
        assert len(retention["overdue"]) == 100
        assert {o["scope"] for o in retention["overdue"]} == {"customer_data"}
        seven = then.subject(subject_id(7), current=False)
        assert seven["status"] == "active"  # erased only in September
        assert not any(d["erased"] for d in seven["data"])
        assert all(d["value"] is None for d in seven["data"])
        twenty = then.subject(subject_id(20), current=False)
        assert [(c["active"], c["channels"]) for c in twenty["consents"]] == [
            (True, ["email", "phone"])
        ]
        html = produce(then, "requests", now=moment, fmt="html", as_of=moment, basis="occurred")
        assert "Replayed for audit" in html and "15 May 2025" in html

    done = cli(
        env, "audit", "replay", "--as-of", MID_MAY, "--by", "occurred", "--report", "requests"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["answered_late"] == 8
    done = cli(
        env, "audit", "replay", "--as-of", MID_MAY, "--by", "occurred", "--subject", subject_id(7)
    )
    assert json.loads(done.stdout)["status"] == "active"
