"""Every story in ../shared/scenarios, on SQLite and PostgreSQL, through Python and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ledger.clock import parse_instant
from ledger.facade import Ledger
from tests.scenarios import run_scenario, scenario_files

FILES = scenario_files()


class FacadeDriver:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def execute(self, command: dict[str, Any]) -> dict[str, Any]:
        return self.ledger.execute(command)

    def sweep(self, now: str) -> dict[str, Any]:
        return self.ledger.sweep(parse_instant(now))

    def show(self, subject: str) -> dict[str, Any]:
        view = self.ledger.subject(subject, reveal=True, purpose="scenario check", actor="tests")
        return {"ok": True, **view}


class CLIDriver:
    """Drives the real `ledger` command in a subprocess, one invocation a line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def _run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ledger", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )

    def execute(self, command: dict[str, Any]) -> dict[str, Any]:
        done = self._run("exec", "-", stdin=json.dumps(command) + "\n")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        assert done.returncode == (0 if result["ok"] else 1), done.stderr
        return result

    def sweep(self, now: str) -> dict[str, Any]:
        done = self._run("sweep", "--now", now, "--json")
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def show(self, subject: str) -> dict[str, Any]:
        done = self._run("subject", "show", subject, "--reveal", "--purpose", "scenario", "--json")
        assert done.returncode == 0, done.stderr
        return {"ok": True, **json.loads(done.stdout)}


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario_through_python(path: Path, ledger: Ledger) -> None:
    assert run_scenario(path, FacadeDriver(ledger)) == []


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario_through_cli(path: Path, cli_env: dict[str, str]) -> None:
    assert run_scenario(path, CLIDriver(cli_env)) == []
