"""`ledger serve` takes its server options from the environment (`LEDGER_API_*`) and changes
only what its command line gives: a real `ledger serve` subprocess on SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from ledger.api.process import ServerProcess
from ledger.config import Settings
from tests.test_api_support import ledger_env, make_tokens

LIMIT = 4096


def _register(subject: str, padding: int) -> dict[str, object]:
    """A valid command whose JSON grows with `padding` (a legal free-text field)."""
    return {
        "type": "register_subject",
        "subject": subject,
        "kind": "prospect",
        "purpose": "customer_administration",
        "legal_basis": "legitimate_interest",
        "idempotency_key": "k" * padding,
    }


def test_serve_honours_the_body_limit_of_the_environment(tmp_path: Path) -> None:
    env = {**ledger_env(tmp_path / "home", "sqlite", None), "LEDGER_API_BODY_LIMIT": str(LIMIT)}
    tokens = make_tokens(Settings.from_env(env))
    # A command-line option given beside it must not put the other options back to defaults.
    server = ServerProcess(env, ["--group-max", "8", "--no-sweep"], log_dir=tmp_path)
    try:
        server.wait_ready()
        headers = {"Authorization": f"Bearer {tokens['service']}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            small = client.post("/v1/commands", json=_register(str(uuid.uuid4()), 100))
            assert small.status_code == 200, small.text
            big = _register(str(uuid.uuid4()), LIMIT)
            answer = client.post("/v1/commands", json=big)
            assert answer.status_code == 413, answer.text
            assert answer.json()["error"]["code"] == "invalid_command"
            assert str(LIMIT) in answer.json()["error"]["message"]
            # 4 KiB is far below the default of 1 MiB: without the environment it is read.
            assert len(httpx.Request("POST", "/", json=big).read()) < 1024 * 1024
    finally:
        assert server.stop() == 0, server.output()


def test_serve_refuses_a_malformed_option_in_the_environment(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")} | ledger_env(
        tmp_path / "home", "sqlite", None
    )
    env["LEDGER_API_BODY_LIMIT"] = "one megabyte"
    done = subprocess.run(
        [sys.executable, "-m", "ledger", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "error" in done.stderr and "LEDGER_API_BODY_LIMIT" in done.stderr
    assert "Traceback" not in done.stderr
