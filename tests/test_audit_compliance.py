"""`ledger report compliance` (SQLite and PostgreSQL): a clean history holds every assertion;
events written behind the rules' back, late answers, overdue scopes, holds and a re-signed
checkpoint are each found, with the events involved."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from eventsourcing.persistence import StoredEvent

from ledger import reports
from ledger.audit import service
from ledger.audit.note import Checkpoint, Signer, format_checkpoint, sign_note
from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.errors import LedgerError
from ledger.facade import Ledger
from ledger.projections.replay import replay_as_of
from tests.audit_support import CA, Raw, audit, story

TOPIC = "ledger.domain.subject:DataSubject."


def compliance(ledger: Ledger, fmt: str = "json", now: datetime | None = None) -> Any:
    return reports.produce(ledger.read_models, "compliance", now=now or ledger.clock.now(), fmt=fmt)


def inject(ledger: Ledger, subject: str, kind: str, **fields: Any) -> int:
    """Write an event straight into the event store, past every rule (a buggy writer, or a
    direct database write); returns its version."""
    version = max(v for _, v, _ in audit(ledger).store.subject_events(uuid.UUID(subject))) + 1
    state = {
        "timestamp": datetime.now(UTC).isoformat(),
        "occurred_at": ledger.clock.now().isoformat(),
        "actor": "intruder",
        **fields,
    }
    ledger.app.recorder.insert_events(
        [StoredEvent(uuid.UUID(subject), version, TOPIC + kind, orjson.dumps(state))]
    )
    return version


def findings(report: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["check"] == check and f["severity"] == "violation"]


def test_a_clean_history_holds_every_assertion(ledger: Ledger) -> None:
    story(ledger)
    service.seal(ledger)
    report = compliance(ledger)
    assert report["ok"], [f for f in report["findings"] if f["severity"] == "violation"]
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["marketing"]["checked"] == 3
    assert checks["disclosures"]["checked"] == 3
    assert checks["requests"]["checked"] == 3
    assert report["checkpoints"]["consistent_with_all_earlier"] is True
    assert report["checkpoints"]["signatures_checked"] is True
    assert report["controller"]["name"] == "CEKURA A/S"
    assert report["events_recorded"] == ledger.max_position() >= report["events_checked"]


def test_the_compliance_report_is_not_made_from_a_replay(ledger: Ledger) -> None:
    """A replay's temporary store holds read models only: the report reads the live event
    log, in the same read as the read models, and says so instead of failing on a table."""
    story(ledger)
    moment = ledger.clock.now()
    with (
        replay_as_of(ledger.app, ledger.policy, moment) as models,
        pytest.raises(LedgerError) as raised,
    ):
        reports.produce(models, "compliance", now=moment, as_of=moment, current=False)
    assert raised.value.code == "invalid_command"
    assert "live event log" in raised.value.message


def test_violations_are_found_with_their_events(ledger: Ledger) -> None:
    ids = story(ledger, subjects=3)
    subject = ids[0]
    sms = inject(
        ledger,
        subject,
        "DataProcessed",
        purpose="marketing",
        activity="offer",
        channel="sms",
        categories=[],
    )
    objected = ledger.execute({"type": "object", "subject": ids[2], "purpose": "marketing"})
    assert objected["ok"]
    after_objection = inject(
        ledger,
        ids[2],
        "DataProcessed",
        purpose="marketing",
        activity="mail",
        channel="email",
        categories=[],
    )
    disclosed = inject(
        ledger,
        subject,
        "DataDisclosed",
        agreement=str(uuid.uuid4()),
        categories=["name"],
        recipient_kind="other",
        country="DK",
    )
    transferred = inject(
        ledger, subject, "DataTransferred", categories=["orders"], country="US", recipient="x"
    )
    health = inject(
        ledger,
        subject,
        "DataCollected",
        category="health",
        value={"scope": "customer_data", "kid": "k", "ct": "c", "commit": "0" * 64},
        purpose=CA,
        legal_basis="contract",
        source="third_party",
        scope="customer_data",
        cpr_ground=None,
    )
    service.seal(ledger)  # signed as they stand: the log is intact, the acts are not
    report = compliance(ledger)
    assert not report["ok"]

    def cited(check: str) -> set[tuple[str, int]]:
        return {(e["subject"], e["version"]) for f in findings(report, check) for e in f["events"]}

    assert (subject, sms) in cited("marketing")
    assert (ids[2], after_objection) in cited("marketing")
    assert (subject, disclosed) in cited("disclosures")
    assert (subject, transferred) in cited("eu")
    assert (subject, health) in cited("sensitive")
    assert len(findings(report, "sensitive")) == 2  # not from the subject; no explicit consent
    failed = {c["check"] for c in report["checks"] if not c["ok"]}
    assert failed == {"marketing", "disclosures", "eu", "sensitive"}
    # The human formats name each finding's events.
    text = compliance(ledger, fmt="md")
    assert text.startswith("# Compliance assertions over the whole history")
    assert "CEKURA A/S" in text and f"DataProcessed v{sms}" in text


def test_the_audit_keeps_the_domain_rules_for_objections_and_marketing_deadlines(
    ledger: Ledger, clock: FixedClock
) -> None:
    """The audit's replay had drifted from the domain: a consent given after an objection
    lifted the objection (it stands, R6), and a rectification moved the marketing deadline
    (only a new registration does). Each hid a violation."""
    clock.set(datetime(2024, 1, 10, 12, tzinfo=UTC))
    subject = ledger.execute(
        {"type": "register_subject", "kind": "customer", "purpose": CA, "legal_basis": "contract"}
    )["subject"]
    consent = {
        "type": "give_consent",
        "subject": subject,
        "purpose": "marketing",
        "notice_version": "2018-05-25",
        "method": "web_form",
        "channels": ["email"],
    }
    assert ledger.execute(consent)["ok"]
    profile = {
        "type": "collect",
        "subject": subject,
        "category": "marketing_profile",
        "value": {"segment": "A"},
        "purpose": "marketing",
        "legal_basis": "consent",
        "source": "observed",
    }
    assert ledger.execute(profile)["ok"]  # marketing registered 10 January 2024
    assert ledger.execute({"type": "object", "subject": subject, "purpose": "marketing"})["ok"]
    clock.set(datetime(2024, 6, 10, 12, tzinfo=UTC))
    assert ledger.execute(consent)["ok"]  # accepted, and the objection still stands
    rectified = {"type": "rectify", "subject": subject, "category": "marketing_profile"}
    assert ledger.execute({**rectified, "value": {"segment": "B"}})["ok"]
    mailed = inject(
        ledger,
        subject,
        "DataProcessed",
        purpose="marketing",
        activity="newsletter",
        channel="email",
        categories=[],
    )
    service.seal(ledger)
    report = compliance(ledger, now=datetime(2025, 2, 1, 12, tzinfo=UTC))
    assert (subject, mailed) in {
        (e["subject"], e["version"]) for f in findings(report, "marketing") for e in f["events"]
    }
    overdue = findings(report, "retention")
    assert any("marketing is past its deadline" in f["message"] for f in overdue), overdue
    scopes = {r["scope"]: r for r in ledger.subject(subject)["retention"]}
    assert scopes["marketing"]["deadline"] == "2025-01-10"


def test_late_answers_and_overdue_scopes(ledger: Ledger, clock: FixedClock) -> None:
    prospect = ledger.execute(
        {
            "type": "register_subject",
            "kind": "prospect",
            "purpose": CA,
            "legal_basis": "legitimate_interest",
            "identifiers": {"email": "p@example.dk"},
        }
    )["subject"]
    opened = ledger.execute({"type": "open_request", "subject": prospect, "right": "access"})
    due = datetime.fromisoformat(opened["due"] + "T12:00:00+01:00")
    clock.set(due + timedelta(days=3))
    done = ledger.execute(
        {
            "type": "complete_request",
            "subject": prospect,
            "request": opened["request"],
            "outcome": "fulfilled",
        }
    )
    assert done["ok"]
    report = compliance(ledger)
    late = findings(report, "requests")
    assert len(late) == 1 and "answered on" in late[0]["message"]
    assert [e["event"] for e in late[0]["events"]] == ["RequestCompleted", "RequestOpened"]
    assert not findings(report, "retention")
    # Three months on, the prospect's data (2 months after registration) is overdue.
    report = compliance(ledger, now=clock.now() + timedelta(days=90))
    overdue = findings(report, "retention")
    assert overdue and "customer_data is past its deadline" in overdue[0]["message"]
    # A sweep that late shreds it, and the report says it was late, citing the shredding.
    clock.set(clock.now() + timedelta(days=90))
    ledger.sweep()
    late_shred = findings(compliance(ledger), "retention")
    assert len(late_shred) == 1 and "after its deadline" in late_shred[0]["message"]
    assert late_shred[0]["events"][0]["event"] == "ScopeShredded"


def test_people_whose_data_others_gave_must_be_told_within_a_month(
    ledger: Ledger, clock: FixedClock
) -> None:
    """R14 / Art. 14(3)(a): a contact person registered with data a customer gave is told
    within a month; one told late, and one not told at all past the month, are findings."""
    customer = ledger.execute(
        {"type": "register_subject", "kind": "customer", "purpose": CA, "legal_basis": "contract"}
    )["subject"]

    def contact() -> str:
        command = {
            "type": "register_subject",
            "kind": "contact_person",
            "purpose": CA,
            "legal_basis": "legitimate_interest",
            "provided_by": customer,
        }
        return str(ledger.execute(command)["subject"])

    def tell(subject: str) -> None:
        notice = {"type": "notify_subject", "subject": subject, "notice": "privacy_policy"}
        assert ledger.execute({**notice, "policy_version": "2018-05-25"})["ok"]

    told, late, never = contact(), contact(), contact()
    tell(told)
    assert not findings(compliance(ledger), "informed")
    assert not findings(compliance(ledger, now=clock.now() + timedelta(days=20)), "informed")
    clock.set(clock.now() + timedelta(days=40))
    tell(late)
    report = compliance(ledger)
    found = {f["subject"]: f for f in findings(report, "informed")}
    assert set(found) == {late, never}
    assert "later than the month" in found[late]["message"]
    assert [e["event"] for e in found[late]["events"]] == ["Registered", "SubjectNotified"]
    assert "has not been told" in found[never]["message"]
    assert {c["check"]: c for c in report["checks"]}["informed"]["checked"] == 3


def test_a_sweep_on_its_deadline_is_on_time(ledger: Ledger, clock: FixedClock) -> None:
    prospect = ledger.execute(
        {
            "type": "register_subject",
            "kind": "prospect",
            "purpose": CA,
            "legal_basis": "legitimate_interest",
            "identifiers": {"email": "q@example.dk"},
        }
    )["subject"]
    deadline = ledger.subject(prospect)["retention"][0]["deadline"]
    clock.set(datetime.fromisoformat(deadline + "T06:00:00+02:00"))
    assert ledger.sweep()["shredded"]
    report = compliance(ledger)
    assert not findings(report, "retention")
    assert {c["check"]: c for c in report["checks"]}["retention"]["checked"] == 1


def test_legal_holds_show_what_they_kept(ledger: Ledger, clock: FixedClock) -> None:
    ids = story(ledger, subjects=1)
    held = ledger.execute({"type": "place_legal_hold", "subject": ids[0], "reason": "dispute"})
    assert held["ok"]
    erased = ledger.execute({"type": "erase", "subject": ids[0]})
    assert erased["retained"] and not erased["shredded"]
    report = compliance(ledger, now=clock.now() + timedelta(days=400))
    (hold,) = report["legal_holds"]
    assert hold["hold"] == held["hold"] and hold["reason"] == "dispute"
    assert hold["released_at"] is None
    kept = {k["scope"]: k["why"] for k in hold["kept"]}
    assert "customer_data" in kept
    assert not findings(report, "retention")  # the hold explains why nothing was shredded
    html = compliance(ledger, fmt="html")
    assert "<html" in html.lower() and "dispute" in html and "CEKURA A/S" in html


def test_an_unsigned_history_or_a_log_re_signed_by_another_key_fails_the_report(
    ledger: Ledger, settings: Settings, ledger_env: dict[str, str], monkeypatch: Any
) -> None:
    """Events and no checkpoint is a failure of the append-only check (it said ok with one
    violation); so is a log whose checkpoints were re-signed by another key and that key
    written into the database (the report once took the database's word for the key)."""
    story(ledger, subjects=1)
    unsigned = {c["check"]: c for c in compliance(ledger)["checks"]}["checkpoints"]
    assert unsigned["ok"] is False and unsigned["violations"] == 1
    service.seal(ledger)
    assert {c["check"]: c for c in compliance(ledger)["checks"]}["checkpoints"]["ok"] is True
    log = audit(ledger)
    forger = Signer.generate(log.origin)
    with log.store.reader() as s:
        stored = s.checkpoints()
    raw = Raw(settings)
    try:
        for cp in stored:
            note = sign_note(
                format_checkpoint(Checkpoint(log.origin, cp.tree_size, cp.root)), forger
            )
            raw.q("UPDATE audit_checkpoints SET note = ? WHERE tree_size = ?", (note, cp.tree_size))
        raw.q(
            "UPDATE audit_meta SET value = ? WHERE name = ?",
            (forger.verifier.vkey(), "public_key"),
        )
    finally:
        raw.close()
    for name, value in ledger_env.items():  # the signing key is configured, as in the CLI
        monkeypatch.setenv(name, value)
    report = compliance(ledger)
    checkpoints = {c["check"]: c for c in report["checks"]}["checkpoints"]
    assert checkpoints["ok"] is False and not report["ok"]
    assert any("another public key" in p for p in report["checkpoints"]["problems"])


def test_an_inconsistent_checkpoint_fails_the_report(ledger: Ledger, settings: Settings) -> None:
    ids = story(ledger, subjects=1)
    service.seal(ledger)
    ledger.execute({"type": "record_dialogue", "subject": ids[0]})
    size = service.seal(ledger).tree_size
    log = audit(ledger)
    assert log.signer is not None
    bogus = hashlib.sha256(b"rewritten").digest()
    note = sign_note(format_checkpoint(Checkpoint(log.origin, size, bogus)), log.signer)
    raw = Raw(settings)
    try:
        raw.q(
            "UPDATE audit_checkpoints SET note = ?, root = ? WHERE tree_size = ?",
            (note, bogus, size),
        )
    finally:
        raw.close()
    report = compliance(ledger)
    cp = report["checkpoints"]
    assert cp["consistent_with_all_earlier"] is False and cp["problems"]
    assert not report["ok"]
    assert {c["check"] for c in report["checks"] if not c["ok"]} == {"checkpoints"}
