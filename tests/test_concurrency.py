"""Two OS processes append to the same subject at once on PostgreSQL: nothing is lost.

Each process sends its own commands (tagged by `actor`) and the same idempotent commands
as the other. Afterwards every command reported ok is in the history exactly once, the
versions run 1..n without gaps, the values decrypt to what was sent, and each idempotent
command was written once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

from ledger.clock import FixedClock
from ledger.config import Settings
from ledger.crypto.sealing import SealedValue, unseal
from ledger.domain.subject import DataSubject
from ledger.facade import Ledger
from tests.conftest import MASTER_KEY, PG_URL, require_postgres

ROOT = Path(__file__).resolve().parents[1]
PER_PROCESS = 100
SHARED = 10

WRITER = """
import json, sys
from ledger.config import Settings
from ledger.facade import Ledger

subject, tag, count, shared = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
out = []
with Ledger.open(Settings.from_env()) as ledger:
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    once = ledger.execute({"type": "register_subject", "kind": "prospect",
                           "purpose": "customer_administration",
                           "legal_basis": "legitimate_interest",
                           "idempotency_key": "register-once"})
    out.append(["register-once", once])
    for i in range(count):
        actor = f"{tag}-{i}"
        if i % 2:
            command = {"type": "record_dialogue", "subject": subject, "actor": actor}
        else:
            command = {"type": "collect", "subject": subject, "category": "orders",
                       "value": f"ordre {actor}", "purpose": "customer_administration",
                       "legal_basis": "contract", "source": "subject", "actor": actor}
        out.append([actor, ledger.execute(command)])
        if i % (count // shared) == 0:
            j = i // (count // shared)
            key = f"shared-{j}"
            command = {"type": "record_dialogue", "subject": subject, "actor": key,
                       "idempotency_key": key}
            out.append([key, ledger.execute(command)])
print(json.dumps(out), flush=True)
"""


def start_writer(env: dict[str, str], subject: str, tag: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, subject, tag, str(PER_PROCESS), str(SHARED)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_two_processes_append_to_one_subject_and_lose_nothing(
    pg_schema: str, tmp_path: Path, clock: FixedClock
) -> None:
    require_postgres()
    ledger_env = {
        "LEDGER_HOME": str(tmp_path / "home"),
        "LEDGER_MASTER_KEY": MASTER_KEY,
        "LEDGER_DATABASE_URL": f"{PG_URL}?schema={pg_schema}",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(ledger_env)
    settings = Settings.from_env(ledger_env)
    with Ledger.open(settings) as ledger:
        # no key yet: both processes race to create the subject's first scope key too
        subject = ledger.execute(
            {
                "type": "register_subject",
                "kind": "customer",
                "purpose": "customer_administration",
                "legal_basis": "contract",
            }
        )["subject"]

    writers = [start_writer(env, subject, tag) for tag in ("a", "b")]
    for writer in writers:
        assert writer.stdout is not None
        line = writer.stdout.readline().strip()
        if line != "ready":
            assert writer.stderr is not None
            raise AssertionError(f"writer did not start: {writer.stderr.read()}")
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
    outputs: list[list[tuple[str, dict[str, Any]]]] = []
    for writer in writers:
        stdout, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr
        outputs.append([(actor, result) for actor, result in json.loads(stdout.splitlines()[-1])])

    everything = [item for output in outputs for item in output]
    failed = [(actor, result) for actor, result in everything if not result["ok"]]
    assert failed == []  # retried on conflicts: nothing was refused, so nothing was lost
    own = [actor for actor, _ in everything if actor[0] in "ab"]
    assert len(own) == 2 * PER_PROCESS

    with Ledger.open(settings) as ledger:
        history = ledger.history(subject)
        # versions 1..n without gaps or repeats
        assert [e["version"] for e in history] == list(range(1, len(history) + 1))
        actors = [e["actor"] for e in history[1:]]
        # every own command exactly once, and nothing else but one of each shared command
        assert sorted(a for a in actors if a[0] in "ab") == sorted(own)
        shared = sorted(a for a in actors if a.startswith("shared-"))
        assert shared == sorted(f"shared-{j}" for j in range(SHARED))
        assert len(history) == 1 + 2 * PER_PROCESS + SHARED
        # both processes got the same first result for the same idempotency key
        for key in {actor for actor, _ in everything if actor[0] not in "ab"}:
            results = [result for actor, result in everything if actor == key]
            assert len(results) == 2
            assert results[0] == results[1], key
        once = [result["subject"] for actor, result in everything if actor == "register-once"]
        assert once[0] == once[1]
        registered = list(ledger.subject_ids())
        assert sorted(registered) == sorted({subject, once[0]})
        # every value decrypts to what its process sent
        version_actor = {e["version"]: e["actor"] for e in history}
        keys = ledger.keystore.keys(subject)
        assert len(keys) == 1  # one key generation for the scope, whoever created it
        orders: list[Any] = [
            event
            for event in ledger.app.events.get(UUID(subject))
            if isinstance(event, DataSubject.DataCollected) and event.category == "orders"
        ]
        assert len(orders) == PER_PROCESS
        for event in orders:
            sealed = SealedValue.from_dict(event.value)
            value = unseal(keys[sealed.kid], sealed, subject=subject, category="orders")
            assert value == f"ordre {version_actor[event.originator_version]}"
