"""A configuration the ledger cannot open with ends a command with one `error configuration:`
line naming what is wrong and exit status 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MASTER_KEY


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update({"LEDGER_HOME": str(home), "LEDGER_MASTER_KEY": MASTER_KEY, **extra})
    return env


def _ledger(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _refused(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error configuration: "), done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert done.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such policy catalogue"),
        ("this is = not [ TOML", "not valid TOML"),
        ('name = "x"\n', ""),  # TOML, but not a catalogue
    ],
)
def test_a_bad_policy(tmp_path: Path, content: str | None, expected: str) -> None:
    policy = tmp_path / "policy.toml"
    if content is not None:
        policy.write_text(content)
    done = _ledger(_env(tmp_path / "home", LEDGER_POLICY=str(policy)), "subject", "history", "x")
    _refused(done, "LEDGER_POLICY", str(policy), expected)


def test_a_bad_database_url(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _refused(
        _ledger(_env(home, LEDGER_DATABASE_URL="mysql://db/ledger"), "init"),
        "LEDGER_DATABASE_URL must start with sqlite:/// or postgresql://",
    )
    # nothing listens on port 1: refused at once, without a PostgreSQL server
    unreachable = "postgresql://ledger:s3cret-pw@127.0.0.1:1/ledger"
    line = _refused(
        _ledger(_env(home, LEDGER_DATABASE_URL=unreachable), "init"),
        "cannot open the database (LEDGER_DATABASE_URL)",
        "port 1",
    )
    assert "s3cret-pw" not in line
    _refused(
        _ledger(_env(home, LEDGER_KEYSTORE_URL="keys.db"), "init"),
        "LEDGER_KEYSTORE_URL must start with",
    )


def test_token_commands_refuse_a_bad_configuration_the_same_way(tmp_path: Path) -> None:
    """`ledger token` opened its store without the CLI's care: a traceback."""
    home = tmp_path / "home"
    create = ("token", "create", "--role", "service", "--name", "billing")
    _refused(
        _ledger(_env(home, LEDGER_DATABASE_URL="mysql://db/ledger"), *create),
        "LEDGER_DATABASE_URL must start with sqlite:/// or postgresql://",
    )
    unreachable = "postgresql://ledger:s3cret-pw@127.0.0.1:1/ledger"
    for args in (create, ("token", "list"), ("token", "revoke", "billing")):
        line = _refused(
            _ledger(_env(home, LEDGER_DATABASE_URL=unreachable), *args),
            "cannot open the database (LEDGER_DATABASE_URL)",
        )
        assert "s3cret-pw" not in line


def test_a_bad_master_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _refused(
        _ledger(_env(home, LEDGER_MASTER_KEY="not base64 at all!"), "init"),
        "LEDGER_MASTER_KEY is not base64",
    )
    _refused(
        _ledger(_env(home, LEDGER_MASTER_KEY="c2hvcnQ="), "init"),
        "LEDGER_MASTER_KEY",
        "32 bytes",
    )
    created = _ledger(_env(home), "init")
    assert created.returncode == 0, created.stderr
    other = "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE="  # 32 bytes, not the store's key
    _refused(
        _ledger(_env(home, LEDGER_MASTER_KEY=other), "subject", "find", "--email", "a@b.dk"),
        "the master key does not match this key store",
        "LEDGER_MASTER_KEY",
    )
