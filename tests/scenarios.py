"""The runner for `../shared/scenarios/*.jsonl` (format in its README), for every front end.

A front end is a `Driver`: execute one command, sweep at a time, show a subject. The same
checks then apply to the Python facade, the CLI and HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.conftest import SHARED

SCENARIOS = SHARED / "scenarios"


class Driver(Protocol):
    def execute(self, command: dict[str, Any]) -> dict[str, Any]: ...

    def sweep(self, now: str) -> dict[str, Any]: ...

    def show(self, subject: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Line:
    file: str
    number: int
    command: dict[str, Any]
    expect: str
    check: dict[str, Any] | None


def scenario_files() -> list[Path]:
    files = sorted(SCENARIOS.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no scenario files in {SCENARIOS}")
    return files


def lines(path: Path) -> Iterator[Line]:
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if raw.strip():
            data = json.loads(raw)
            yield Line(path.name, number, data["command"], data["expect"], data.get("check"))


def outcome(result: dict[str, Any]) -> str:
    return "ok" if result.get("ok") else str(result["error"]["code"])


def check_view(view: dict[str, Any], check: dict[str, Any]) -> list[str]:
    """Differences between `subject show --reveal --json` and a line's check."""
    problems = []
    for key, expected in check.items():
        if key == "data":
            values = {item["category"]: item["value"] for item in view["data"]}
            for category, value in expected.items():
                if category not in values:
                    problems.append(f"data.{category} missing")
                elif values[category] != value:
                    problems.append(f"data.{category}: got {values[category]!r}, want {value!r}")
        elif view.get(key) != expected:
            problems.append(f"{key}: got {view.get(key)!r}, want {expected!r}")
    return problems


def run_scenario(path: Path, driver: Driver) -> list[str]:
    """Run every line; return one message per line whose outcome or check differs."""
    failures = []
    for line in lines(path):
        where = f"{line.file}:{line.number} {line.command.get('type')}"
        kind = line.command.get("type")
        if kind == "@sweep":
            result = driver.sweep(line.command["now"])
        elif kind == "@show":
            result = driver.show(line.command["subject"])
        else:
            result = driver.execute(line.command)
        got = outcome(result)
        if got != line.expect:
            failures.append(f"{where}: got {got}, want {line.expect} ({result})")
            continue
        if line.check:
            if kind == "@show":
                problems = check_view(result, line.check)
            else:
                problems = [
                    f"{k}: got {result.get(k)!r}, want {v!r}"
                    for k, v in line.check.items()
                    if result.get(k) != v
                ]
            failures.extend(f"{where}: {p}" for p in problems)
    return failures
