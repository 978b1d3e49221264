"""The help of every command: Typer's rich help keeps a docstring's line breaks, so a
paragraph wrapped in the source shows broken (`ledger exec --help` once did)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer
from typer.testing import CliRunner

from ledger.cli import app


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command, with its path (groups have `commands`)."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_help_paragraphs_are_not_broken() -> None:
    seen = 0
    for path, command in _commands(typer.main.get_command(app)):
        for paragraph in (command.help or "").split("\n\n"):
            assert "\n" not in paragraph.strip(), f"ledger {' '.join(path)}: {paragraph!r}"
        seen += 1
    assert seen >= 25


def test_exec_help_reads_whole() -> None:
    shown = CliRunner().invoke(app, ["exec", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "a rejected line does not stop the rest" in text
    assert "A line that is not UTF-8 JSON is rejected as invalid_command." in text
    lines = [line.strip() for line in shown.output.splitlines()]
    assert not any(line.startswith("rest still run") for line in lines)
