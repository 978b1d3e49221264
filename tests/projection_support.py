"""Helpers for the read-model tests: fresh ledgers per backend, random command steps.

A step is a small tuple drawn by hypothesis; `StoryRunner` turns it into a real command,
resolving references (agreements, holds, requests) against what earlier steps created.
Many steps are rejected by the rules, which is fine: rejected commands write nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from hypothesis import strategies as st

from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.errors import LedgerError
from ledger.facade import Ledger
from ledger.projections.views import dump_tables
from ledger.queries import subject_view
from tests.conftest import MASTER_KEY, PG_URL, _conninfo

SUBJECTS = [
    "0b7c1e9a-0000-4000-8000-000000000001",
    "0b7c1e9a-0000-4000-8000-000000000002",
    "0b7c1e9a-0000-4000-8000-000000000003",
]
START = datetime(2024, 1, 8, 9, 0, tzinfo=UTC)


@contextmanager
def fresh_env(backend: str) -> Iterator[dict[str, str]]:
    """The environment of an empty ledger on the backend, removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="ledger-rm-"))
    env = {"LEDGER_HOME": str(home / "home"), "LEDGER_MASTER_KEY": MASTER_KEY}
    schema = ""
    if backend == "postgres":
        schema = f"t_{uuid.uuid4().hex[:16]}"
        env["LEDGER_DATABASE_URL"] = f"{PG_URL}?schema={schema}"
    try:
        yield env
    finally:
        shutil.rmtree(home, ignore_errors=True)
        if schema:
            with psycopg.connect(_conninfo(PG_URL), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def fresh_ledger(backend: str, clock: FixedClock | None = None) -> Iterator[Ledger]:
    """A ledger on an empty store of the backend, removed afterwards."""
    with (
        fresh_env(backend) as env,
        Ledger.open(Settings.from_env(env), clock=clock or FixedClock(START)) as ledger,
    ):
        yield ledger


def cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run the `ledger` command in a subprocess with this ledger environment."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full,
        timeout=300,
    )


def tables(ledger: Ledger) -> dict[str, list[dict[str, Any]]]:
    with ledger.read_models.reading(current=False) as cur:
        return dump_tables(cur)


def aggregate_views_match(ledger: Ledger) -> list[str]:
    """Subjects whose read-model view differs from the aggregate's (`ledger.queries`)."""
    ledger.read_models.catch_up()
    wrong = []
    for subject_id in ledger.subject_ids():
        expected = subject_view(ledger.app.load_subject(subject_id), ledger.policy)
        if ledger.read_models.subject(subject_id) != expected:
            wrong.append(subject_id)
    return wrong


# -- random steps -------------------------------------------------------------------------

COLLECTS = [
    ("name", "customer_administration", "contract", "subject"),
    ("address", "customer_administration", "contract", "subject"),
    ("phone", "customer_administration", "contract", "subject"),
    ("email", "marketing", "consent", "subject"),
    ("marketing_profile", "marketing", "legitimate_interest", "derived"),
    ("marketing_profile", "marketing", "consent", "derived"),
    ("invoice", "bookkeeping", "legal_obligation", "system"),
    ("call_recording", "call_documentation", "legitimate_interest", "observed"),
    ("health", "customer_administration", "contract", "subject"),
    ("competition_entry", "competition", "consent", "subject"),
    ("orders", "analytics", "legitimate_interest", "observed"),
    ("name", "bookkeeping", "legal_obligation", "system"),
]
PURPOSES = ["marketing", "customer_administration", "analytics", "competition", "bookkeeping"]
CHANNELS = ["email", "sms", "phone", "post"]
RIGHTS = ["access", "erasure", "rectification", "restriction", "objection", "portability"]

subject_ix = st.integers(0, len(SUBJECTS) - 1)
small = st.integers(0, 3)

step = st.one_of(
    st.tuples(st.just("register"), subject_ix, st.sampled_from(["customer", "prospect"]), small),
    st.tuples(st.just("collect"), subject_ix, st.integers(0, len(COLLECTS) - 1), small),
    st.tuples(st.just("collect"), subject_ix, st.integers(0, len(COLLECTS) - 1), small),
    st.tuples(st.just("rectify"), subject_ix, st.sampled_from(["name", "address", "phone"])),
    st.tuples(
        st.just("consent"),
        subject_ix,
        st.sampled_from(PURPOSES),
        st.lists(st.sampled_from(CHANNELS), max_size=2),
        st.booleans(),
    ),
    st.tuples(
        st.just("withdraw"),
        subject_ix,
        st.sampled_from(PURPOSES),
        st.lists(st.sampled_from(CHANNELS), max_size=1),
    ),
    st.tuples(st.just("object"), subject_ix, st.sampled_from(["marketing", "analytics"])),
    st.tuples(st.just("restrict"), subject_ix, st.booleans()),
    st.tuples(st.just("agree"), subject_ix, st.sampled_from(["DK", "SE", "NO"]), st.booleans()),
    st.tuples(st.just("revoke"), subject_ix, small),
    st.tuples(st.just("disclose"), subject_ix, small),
    st.tuples(st.just("transfer"), subject_ix, st.sampled_from(["DE", "US"])),
    st.tuples(
        st.just("process"),
        subject_ix,
        st.sampled_from(["marketing", "analytics", "customer_administration"]),
        st.sampled_from([None, "email", "sms"]),
    ),
    st.tuples(st.just("relationship"), subject_ix, st.booleans()),
    st.tuples(st.just("dialogue"), subject_ix),
    st.tuples(st.just("competition"), subject_ix, small),
    st.tuples(st.just("notify"), subject_ix),
    st.tuples(st.just("hold"), subject_ix, st.booleans(), small),
    st.tuples(st.just("request"), subject_ix, st.sampled_from(RIGHTS)),
    st.tuples(
        st.just("request_step"),
        subject_ix,
        small,
        st.sampled_from(["verify", "extend", "complete"]),
    ),
    st.tuples(st.just("erase"), subject_ix, st.booleans(), st.integers(0, 2)),
    st.tuples(st.just("profile"), subject_ix),
    st.tuples(st.just("view"), subject_ix),
    st.tuples(st.just("sweep"), st.integers(0, 800)),
    st.tuples(st.just("advance"), st.integers(1, 400)),
    st.tuples(st.just("late"), subject_ix, st.integers(1, 60)),
    st.tuples(st.just("catch_up"), st.integers(1, 7)),
)


class StoryRunner:
    """Runs random steps against a ledger, remembering what they created."""

    def __init__(self, ledger: Ledger, clock: FixedClock) -> None:
        self.ledger = ledger
        self.clock = clock
        self.agreements: dict[int, list[str]] = {}
        self.holds: dict[int, list[str]] = {}
        self.requests: dict[int, list[str]] = {}
        self.accepted = 0
        self.counter = 0

    def prelude(self) -> None:
        """Three subjects with something on file, so most random steps are accepted."""
        for i in range(len(SUBJECTS)):
            self.run(("register", i, "customer", i))
        for i in (0, 1):
            self.run(("profile", i))
            self.run(("consent", i, "marketing", ["email", "sms"], False))
        self.run(("consent", 0, "competition", [], False))
        self.run(("relationship", 0, True))

    def _pick(self, found: dict[int, list[str]], i: int, k: int) -> str:
        items = found.get(i, [])
        return items[k % len(items)] if items else str(uuid.UUID(int=k + 1))

    def run(self, step: tuple[Any, ...]) -> None:
        kind = step[0]
        if kind == "sweep":
            self.ledger.sweep(self.clock.now() + timedelta(days=step[1]))
            return
        if kind == "advance":
            self.clock.set(self.clock.now() + timedelta(days=step[1], hours=3))
            return
        if kind == "catch_up":
            self.ledger.read_models.batch_size = step[1]
            self.ledger.read_models.catch_up()
            self.ledger.read_models.batch_size = 1000
            return
        i = step[1]
        subject = SUBJECTS[i]
        if kind == "erase" and step[3] != 0:
            return  # erasure ends most of a subject's story: keep it rare
        if kind == "profile":
            for category in ("name", "address", "phone"):
                self.run(("collect", i, [c[0] for c in COLLECTS].index(category), 0))
            return
        if kind == "view":
            with suppress(LedgerError):
                self.ledger.subject(subject, reveal=True, purpose="test", actor="tests")
            return
        command = self.command(kind, i, subject, step)
        self.counter += 1
        result = self.ledger.execute(command)
        if not result["ok"]:
            return
        self.accepted += 1
        if "agreement" in result:
            self.agreements.setdefault(i, []).append(result["agreement"])
        if "hold" in result:
            self.holds.setdefault(i, []).append(result["hold"])
        if "request" in result:
            self.requests.setdefault(i, []).append(result["request"])

    def command(self, kind: str, i: int, subject: str, s: tuple[Any, ...]) -> dict[str, Any]:
        n = self.counter
        base: dict[str, Any] = {"subject": subject}
        if kind == "register":
            identifiers = [
                {},
                {"email": f"p{i}@example.dk"},
                {"email": f"p{i}@example.dk", "phone": f"+452000000{i}"},
                {"cpr": "170485-1234", "phone": f"+452000000{i}"},
            ][s[3]]
            extra = {"cpr_ground": "identification"} if "cpr" in identifiers else {}
            return {
                "type": "register_subject",
                **base,
                "kind": s[2],
                "purpose": "customer_administration",
                "legal_basis": "contract",
                "identifiers": identifiers,
                **extra,
            }
        if kind == "collect":
            category, purpose, basis, source = COLLECTS[s[2]]
            value: Any = f"{category} value {n}"
            if category == "invoice":
                value = {"number": f"F-{n}", "amount_dkk": "100.00"}
            elif category == "phone":
                value = f"+45 3{n % 10_000_000:07d}"
            elif category == "email":
                value = f"person{n}@example.dk"
            command = {
                "type": "collect",
                **base,
                "category": category,
                "value": value,
                "purpose": purpose,
                "legal_basis": basis,
                "source": source,
            }
            if category == "competition_entry":
                command["competition"] = f"c{s[3]}"
            return command
        if kind == "rectify":
            value = f"+45 4{n % 10_000_000:07d}" if s[2] == "phone" else f"new {s[2]} {n}"
            return {"type": "rectify", **base, "category": s[2], "value": value}
        if kind == "consent":
            command = {
                "type": "give_consent",
                **base,
                "purpose": s[2],
                "notice_version": "2018-05-25",
                "method": "web_form",
                "channels": s[3],
            }
            if s[4]:
                command.update(explicit=True, categories=["health"])
            return command
        if kind == "withdraw":
            return {"type": "withdraw_consent", **base, "purpose": s[2], "channels": s[3]}
        if kind == "object":
            return {"type": "object", **base, "purpose": s[2]}
        if kind == "restrict":
            return {"type": "restrict" if s[2] else "lift_restriction", **base, "reason": "test"}
        if kind == "agree":
            command = {
                "type": "agree_disclosure",
                **base,
                "recipient": {"kind": "family_member", "name": f"Relative {n}", "country": s[2]},
                "categories": ["name", "address"],
                "purpose": "customer_administration",
            }
            if s[3]:
                command["valid_until"] = (self.clock.now() + timedelta(days=30)).date().isoformat()
            return command
        if kind == "revoke":
            agreement = self._pick(self.agreements, i, s[2])
            return {"type": "revoke_disclosure_agreement", **base, "agreement": agreement}
        if kind == "disclose":
            agreement = self._pick(self.agreements, i, s[2])
            return {"type": "disclose", **base, "agreement": agreement, "categories": ["name"]}
        if kind == "transfer":
            return {
                "type": "transfer",
                **base,
                "categories": ["orders"],
                "country": s[2],
                "recipient": "Carrier GmbH",
            }
        if kind == "process":
            command = {"type": "process", **base, "purpose": s[2], "activity": "send"}
            if s[3]:
                command["channel"] = s[3]
            return command
        if kind == "relationship":
            kind_ = "start_relationship" if s[2] else "end_relationship"
            return {"type": kind_, **base, "relationship": "customer"}
        if kind == "dialogue":
            return {"type": "record_dialogue", **base}
        if kind == "competition":
            ends = (self.clock.now() + timedelta(days=10 * s[2])).date().isoformat()
            return {
                "type": "enter_competition",
                **base,
                "competition": f"c{s[2]}",
                "competition_ends_on": ends,
            }
        if kind == "notify":
            return {
                "type": "notify_subject",
                **base,
                "notice": "privacy_policy",
                "policy_version": "2018-05-25",
            }
        if kind == "hold":
            if s[2]:
                return {"type": "place_legal_hold", **base, "reason": "dispute"}
            return {"type": "release_legal_hold", **base, "hold": self._pick(self.holds, i, s[3])}
        if kind == "request":
            return {"type": "open_request", **base, "right": s[2]}
        if kind == "request_step":
            request = self._pick(self.requests, i, s[2])
            if s[3] == "verify":
                return {"type": "verify_identity", **base, "request": request}
            if s[3] == "extend":
                return {"type": "extend_request", **base, "request": request, "reason": "volume"}
            return {
                "type": "complete_request",
                **base,
                "request": request,
                "outcome": "fulfilled",
            }
        if kind == "erase":
            command = {"type": "erase", **base}
            if s[2] and self.requests.get(i):
                command["request"] = self.requests[i][-1]
            return command
        if kind == "late":
            at = self.clock.now() - timedelta(days=s[2])
            return {"type": "record_dialogue", **base, "occurred_at": at.isoformat()}
        raise AssertionError(kind)
