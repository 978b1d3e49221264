"""`ledger subject show` for a person: every part of the state an officer acts on, nothing
cut short. It once left out the restriction, objections, agreements, disclosures and legal
holds (they were only in `--json`) and cut values at 60 characters and ids at the width
of the terminal."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from tests.conftest import MASTER_KEY
from tests.projection_support import cli

SUBJECT = str(uuid.uuid4())
CA = "customer_administration"
NOTE = "Kunden bruger iltkoncentrator i hjemmet og skal varsles mindst tre dage før afbrydelse"


def _commands() -> list[dict[str, object]]:
    base = {"subject": SUBJECT}
    return [
        {
            **base,
            "type": "register_subject",
            "kind": "customer",
            "purpose": CA,
            "legal_basis": "contract",
            "identifiers": {"email": "karen@example.dk"},
        },
        {
            **base,
            "type": "collect",
            "category": "correspondence",
            "value": NOTE,
            "purpose": CA,
            "legal_basis": "contract",
            "source": "subject",
        },
        {
            **base,
            "type": "give_consent",
            "purpose": "marketing",
            "notice_version": "2018-05-25",
            "method": "web_form",
            "channels": ["email"],
        },
        {**base, "type": "object", "purpose": "marketing"},
        {
            **base,
            "type": "agree_disclosure",
            "recipient": {"kind": "family_member", "name": "Søn", "country": "DK"},
            "categories": ["correspondence"],
            "purpose": CA,
        },
        {**base, "type": "place_legal_hold", "reason": "dispute about a bill"},
        {**base, "type": "open_request", "right": "access"},
        {**base, "type": "restrict", "reason": "accuracy contested"},
    ]


def test_show_prints_every_part_whole(tmp_path: Path) -> None:
    env = {"LEDGER_HOME": str(tmp_path / "home"), "LEDGER_MASTER_KEY": MASTER_KEY}
    lines = "\n".join(json.dumps(c) for c in _commands())
    ran = cli(env, "exec", "-", stdin=lines)
    results = [json.loads(line) for line in ran.stdout.splitlines()]
    assert all(r["ok"] for r in results), results
    agreement = results[4]["agreement"]
    hold = results[5]["hold"]
    request = results[6]["request"]

    wide = cli(
        {**env, "COLUMNS": "400"}, "subject", "show", SUBJECT, "--reveal", "--purpose", "check"
    )
    assert wide.returncode == 0, wide.stderr
    text = wide.stdout
    for title in (
        "Subject",
        "Data",
        "Consents",
        "Objections (Art. 21)",
        "Disclosure agreements",
        "Legal holds",
        "Retention",
        "Requests",
    ):
        assert f"\n{title}" in f"\n{text}", title
    for whole in (NOTE, agreement, hold, request, "karen@example.dk", "dispute about a bill"):
        assert whole in text, whole
    restricted = next(line for line in text.splitlines() if "restricted" in line)
    assert "yes" in restricted
    assert "True" not in text and "False" not in text

    # on a narrow terminal long cells wrap: nothing is cut off
    narrow = cli(
        {**env, "COLUMNS": "80"}, "subject", "show", SUBJECT, "--reveal", "--purpose", "check"
    )
    assert narrow.returncode == 0, narrow.stderr
    assert "…" not in narrow.stdout and "..." not in narrow.stdout

    hidden = cli(env, "subject", "show", SUBJECT)
    assert "values hidden" in hidden.stdout and NOTE[:20] not in hidden.stdout

    found = cli(env, "subject", "find", "--email", "karen@example.dk")
    assert SUBJECT in found.stdout
    nobody = cli(env, "subject", "find", "--email", "nobody@example.dk")
    assert nobody.returncode == 0 and nobody.stdout.strip() == "No subject has this email."


def test_show_of_an_erased_subject_says_its_consents_are_not_in_force(tmp_path: Path) -> None:
    """The consent stays on record as given (the JSON keeps it), but an officer reading
    the table must not take it as something marketing may rest on (R17)."""
    env = {"LEDGER_HOME": str(tmp_path / "home"), "LEDGER_MASTER_KEY": MASTER_KEY}
    lines = "\n".join(json.dumps(c) for c in _commands()[:3])
    assert all(json.loads(r)["ok"] for r in cli(env, "exec", "-", stdin=lines).stdout.split())
    before = cli({**env, "COLUMNS": "200"}, "subject", "show", SUBJECT).stdout
    assert "│ marketing │ yes " in before
    erased = cli(env, "exec", "-", stdin=json.dumps({"type": "erase", "subject": SUBJECT}))
    assert json.loads(erased.stdout)["ok"] is True
    after = cli({**env, "COLUMNS": "200"}, "subject", "show", SUBJECT).stdout
    marketing = next(line for line in after.splitlines() if "│ marketing" in line)
    assert "no: the subject was erased" in marketing and "│ yes" not in marketing
    shown = json.loads(cli(env, "subject", "show", SUBJECT, "--json").stdout)
    assert shown["status"] == "erased" and shown["consents"][0]["active"] is True
